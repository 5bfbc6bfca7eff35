import { invalidInput } from './errors';
import {
  MAX_VOLUME_BYTES,
  MiB,
  SECTOR_SIZE,
  type FleetSpec,
  type Resources,
  type WorkloadConfig,
} from './fleet';
import { formatBytes } from './format';
import { assertId } from './ids';

/** Sanity bounds for bad input, not design limits. */
export const MAX_FLEET_HOSTS = 256;
export const MAX_FLEET_INSTANCES = 4096;
const MAX_INSTANCE_VCPU = 1024;
const MAX_INSTANCE_MEMORY_MIB = 64 * 1024 * 1024;
/** Largest single workload write. */
export const MAX_WRITE_SIZE = MiB;

/** A bad value as the operator typed it: NaN and Infinity stay readable, long strings are cut. */
export function shown(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.slice(0, 200));
  if (typeof value === 'object' && value !== null) {
    const json = JSON.stringify(value);
    return json.length > 80 ? `${json.slice(0, 80)}…` : json;
  }
  return String(value);
}

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
    throw invalidInput(`${field} must be a whole number >= 0, got ${shown(value)}`);
  }
  return value;
}

export function assertPositiveInteger(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw invalidInput(`${field} must be a whole number >= 1, got ${shown(value)}`);
  }
  return value;
}

export function assertOptionalBoolean(field: string, value: unknown): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') {
    throw invalidInput(`${field} must be true or false, got ${shown(value)}`);
  }
  return value;
}

/** Bytes per second for a copy: a whole number, 0 meaning unlimited. */
export function assertBandwidth(value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw invalidInput(
      `bandwidth ${shown(value)} is not valid: give whole bytes per second >= 0 (0 = unlimited), e.g. 52428800 for 50 MiB/s`,
    );
  }
  return value;
}

export function assertIntegerInRange(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    throw invalidInput(`${field} ${shown(value)} is out of range: use a whole number from ${min} to ${max}`);
  }
  return value;
}

/** vCPU, MiB of memory and bytes of disk: whole numbers, 0 allowed (e.g. a reservation of disk only). */
export function assertResources(field: string, value: unknown): Resources {
  const fields = assertObject(field, value);
  const check = (d: keyof Resources) => {
    const n = fields[d];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
      throw invalidInput(`${field}.${d} ${shown(n)} is not allowed: use a whole number, 0 or more`);
    }
    return n;
  };
  return { vcpu: check('vcpu'), memoryMiB: check('memoryMiB'), diskBytes: check('diskBytes') };
}

/** The synthetic workload of an instance; returned with only its own fields, in a fixed order. */
export function assertWorkloadConfig(field: string, value: unknown): WorkloadConfig {
  const w = assertObject(field, value);
  const rate = w.writeBytesPerSec;
  if (typeof rate !== 'number' || !Number.isSafeInteger(rate) || rate < 0) {
    throw invalidInput(
      `${field}.writeBytesPerSec ${shown(rate)} is not allowed: use whole bytes per second, 0 or more (0 = idle)`,
    );
  }
  const size = w.writeSize;
  if (
    typeof size !== 'number' ||
    !Number.isSafeInteger(size) ||
    size < SECTOR_SIZE ||
    size > MAX_WRITE_SIZE ||
    size % SECTOR_SIZE !== 0
  ) {
    throw invalidInput(
      `${field}.writeSize ${shown(size)} is not allowed: use a multiple of ${SECTOR_SIZE} from ${SECTOR_SIZE} to ${MAX_WRITE_SIZE} (${formatBytes(MAX_WRITE_SIZE)}), e.g. 4096`,
    );
  }
  return { writeBytesPerSec: rate, writeSize: size };
}

/**
 * The one check of a fleet spec, run by the workflow before anything starts and by the inventory
 * before it records anything. Optional fields that are absent (or null) take their defaults.
 */
export function assertFleetSpec(spec: unknown): FleetSpec {
  const fields = assertObject('fleet spec', spec);
  assertIntegerInRange('hosts', fields.hosts, 1, MAX_FLEET_HOSTS);
  assertIntegerInRange('instances', fields.instances, 0, MAX_FLEET_INSTANCES);
  const size = fields.volumeSizeBytes;
  if (
    typeof size !== 'number' ||
    !Number.isSafeInteger(size) ||
    size < MiB ||
    size > MAX_VOLUME_BYTES ||
    size % MiB !== 0
  ) {
    throw invalidInput(
      `volumeSizeBytes ${shown(size)} is not allowed: use a whole number of MiB between 1 MiB and ` +
        `${formatBytes(MAX_VOLUME_BYTES)}, e.g. 268435456 for 256 MiB`,
    );
  }
  const accounts = fields.accounts;
  if (accounts !== undefined && accounts !== null) {
    if (!Array.isArray(accounts) || accounts.length === 0 || accounts.length > MAX_FLEET_INSTANCES) {
      throw invalidInput(
        `accounts must be a list of 1 to ${MAX_FLEET_INSTANCES} account ids (e.g. ["acct-1"])`,
      );
    }
    accounts.forEach((account, n) => assertId(`accounts[${n}]`, account));
  }
  if (fields.workload !== undefined && fields.workload !== null) {
    assertWorkloadConfig('workload', fields.workload);
  }
  if (fields.instanceShape !== undefined && fields.instanceShape !== null) {
    const shape = assertObject('instanceShape', fields.instanceShape);
    assertIntegerInRange('instanceShape.vcpu', shape.vcpu, 1, MAX_INSTANCE_VCPU);
    assertIntegerInRange('instanceShape.memoryMiB', shape.memoryMiB, 1, MAX_INSTANCE_MEMORY_MIB);
  }
  if (fields.hostCapacity !== undefined && fields.hostCapacity !== null) {
    assertResources('hostCapacity', fields.hostCapacity);
  }
  return spec as FleetSpec;
}
