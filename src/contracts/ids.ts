import { invalidInput } from './errors';

/** Every id (host, instance, volume, account, workflow-derived) must match this before it touches a path. */
export const ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value);
}

/** Throws a non-retryable InvalidInput failure naming the field and what a valid value looks like. */
export function assertId(field: string, value: unknown): string {
  if (!isValidId(value)) {
    const shown = typeof value === 'string' ? JSON.stringify(value.slice(0, 80)) : String(value);
    throw invalidInput(
      `${field} ${shown} is not a valid id: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit (e.g. "i-3")`,
    );
  }
  return value;
}
