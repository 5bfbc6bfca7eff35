import { invalidInput } from './errors';

/** Workflow inputs arrive as JSON from any client (e.g. `temporal workflow start`): trust nothing. */
export function assertObject(field: string, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalidInput(`${field} must be a JSON object, got ${value === null ? 'null' : typeof value}`);
  }
  return value as Record<string, unknown>;
}

/** Workers read and write these paths on their own machine, so only absolute paths make sense. */
export function assertAbsolutePath(field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw invalidInput(`${field} must be a non-empty absolute path, e.g. "/var/tmp/disk.img"`);
  }
  if (value.includes('\0')) {
    throw invalidInput(`${field} contains a NUL character: give a plain absolute path`);
  }
  if (!value.startsWith('/') && !/^[A-Za-z]:[\\/]/.test(value)) {
    throw invalidInput(
      `${field} ${JSON.stringify(value.slice(0, 200))} is relative: give an absolute path, since workers do not share the client's directory`,
    );
  }
  return value;
}

export function assertNonNegativeInteger(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw invalidInput(`${field} must be a whole number >= 0, got ${JSON.stringify(value)}`);
  }
  return value;
}

export function assertPositiveInteger(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw invalidInput(`${field} must be a whole number >= 1, got ${JSON.stringify(value)}`);
  }
  return value;
}

export function assertOptionalBoolean(field: string, value: unknown): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') {
    throw invalidInput(`${field} must be true or false, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** Bytes per second for a copy: a whole number, 0 meaning unlimited. */
export function assertBandwidth(value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw invalidInput(
      `bandwidth ${JSON.stringify(value)} is not valid: give whole bytes per second >= 0 (0 = unlimited), e.g. 52428800 for 50 MiB/s`,
    );
  }
  return value;
}
