import {
  assertBandwidth,
  assertFleetSpec,
  assertIntegerInRange,
  assertResources,
  assertWorkloadConfig,
  DEFAULT_WORKLOAD,
  ErrorType,
  MiB,
  type FleetSpec,
} from '../../src/contracts';
import { expectFailureSync } from '../helpers/failures';

const spec: FleetSpec = { hosts: 2, instances: 3, volumeSizeBytes: 16 * MiB };

describe('assertFleetSpec', () => {
  test('returns a valid spec unchanged, with or without the optional fields', () => {
    expect(assertFleetSpec(spec)).toBe(spec);
    const full: FleetSpec = {
      ...spec,
      accounts: ['acme'],
      workload: DEFAULT_WORKLOAD,
      hostCapacity: { vcpu: 0, memoryMiB: 0, diskBytes: 0 },
      instanceShape: { vcpu: 1, memoryMiB: 512 },
    };
    expect(assertFleetSpec(full)).toEqual(full);
  });

  test('null optional fields mean "use the default", as in the inventory', () => {
    const withNulls = { ...spec, accounts: null, workload: null, hostCapacity: null, instanceShape: null };
    expect(assertFleetSpec(withNulls)).toBe(withNulls);
  });

  const bad: [string, unknown, RegExp][] = [
    ['not an object', [spec], /^fleet spec must be a JSON object/],
    [
      'hosts as a string',
      { ...spec, hosts: '2' },
      /^hosts "2" is out of range: use a whole number from 1 to 256$/,
    ],
    ['NaN instances', { ...spec, instances: NaN }, /^instances NaN is out of range/],
    ['a size in sectors', { ...spec, volumeSizeBytes: MiB + 512 }, /^volumeSizeBytes 1049088 is not allowed/],
    ['accounts not a list', { ...spec, accounts: 'acme' }, /^accounts must be a list of 1 to 4096/],
    ['workload not an object', { ...spec, workload: 5 }, /^workload must be a JSON object, got number$/],
    ['shape without memory', { ...spec, instanceShape: { vcpu: 1 } }, /^instanceShape\.memoryMiB undefined/],
    ['capacity as a list', { ...spec, hostCapacity: [1, 2, 3] }, /^hostCapacity must be a JSON object/],
  ];
  test.each(bad)('refuses %s', (_name, value, message) => {
    expectFailureSync(() => assertFleetSpec(value), ErrorType.InvalidInput, message);
  });
});

describe('assertWorkloadConfig', () => {
  test('keeps only the workload fields, in a fixed order', () => {
    expect(assertWorkloadConfig('w', { writeSize: MiB, writeBytesPerSec: 0, extra: true })).toEqual({
      writeBytesPerSec: 0,
      writeSize: MiB,
    });
  });

  test('names the field it was given', () => {
    expectFailureSync(
      () => assertWorkloadConfig('instance i-1 workload', { writeBytesPerSec: Infinity, writeSize: 4096 }),
      ErrorType.InvalidInput,
      /^instance i-1 workload\.writeBytesPerSec Infinity is not allowed/,
    );
    expectFailureSync(
      () => assertWorkloadConfig('workload', { writeBytesPerSec: 0, writeSize: 0 }),
      ErrorType.InvalidInput,
      /^workload\.writeSize 0 is not allowed: use a multiple of 512 from 512 to 1048576 \(1 MiB\)/,
    );
  });
});

describe('small checks', () => {
  test('assertIntegerInRange includes both bounds', () => {
    expect(assertIntegerInRange('n', 1, 1, 3)).toBe(1);
    expect(assertIntegerInRange('n', 3, 1, 3)).toBe(3);
    expectFailureSync(
      () => assertIntegerInRange('n', 4, 1, 3),
      ErrorType.InvalidInput,
      /^n 4 is out of range/,
    );
  });

  test('assertResources returns the three dimensions in a fixed order', () => {
    expect(assertResources('r', { diskBytes: 3, memoryMiB: 2, vcpu: 1, x: 0 })).toEqual({
      vcpu: 1,
      memoryMiB: 2,
      diskBytes: 3,
    });
    expectFailureSync(
      () => assertResources('r', { vcpu: 1, memoryMiB: 2.5, diskBytes: 3 }),
      ErrorType.InvalidInput,
      /^r\.memoryMiB 2\.5 is not allowed/,
    );
  });

  test('assertBandwidth shows NaN and Infinity as such', () => {
    expect(assertBandwidth(0)).toBe(0);
    expectFailureSync(() => assertBandwidth(NaN), ErrorType.InvalidInput, /^bandwidth NaN is not valid/);
    expectFailureSync(() => assertBandwidth(Infinity), ErrorType.InvalidInput, /^bandwidth Infinity/);
  });
});
