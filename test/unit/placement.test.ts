import { ErrorType, GiB, MiB, type Resources } from '../../src/contracts';
import {
  describeResources,
  fits,
  formatExactBytes,
  loadOf,
  pickHost,
  placeInstances,
  shortfalls,
  type HostLoad,
} from '../../src/planning/placement';
import { expectFailureSync } from '../helpers/failures';

const shape: Resources = { vcpu: 2, memoryMiB: 4096, diskBytes: GiB };
const zero: Resources = { vcpu: 0, memoryMiB: 0, diskBytes: 0 };

function host(hostId: string, capacity: Resources, used: Resources = zero): HostLoad {
  return { hostId, capacity, used };
}

function requests(n: number, resources: Resources = shape) {
  return Array.from({ length: n }, (_, k) => ({ instanceId: `i-${k + 1}`, resources }));
}

describe('placement', () => {
  const big: Resources = { vcpu: 8, memoryMiB: 16384, diskBytes: 4 * GiB };

  test('spreads instances round robin over equal hosts', () => {
    const placed = placeInstances([host('h-1', big), host('h-2', big), host('h-3', big)], requests(5));
    expect([...placed.entries()]).toEqual([
      ['i-1', 'h-1'],
      ['i-2', 'h-2'],
      ['i-3', 'h-3'],
      ['i-4', 'h-1'],
      ['i-5', 'h-2'],
    ]);
  });

  test('puts instances on the least-loaded host first, counting existing use', () => {
    const hosts = [host('h-1', big, { vcpu: 6, memoryMiB: 0, diskBytes: 0 }), host('h-2', big)];
    const placed = placeInstances(hosts, requests(3));
    expect(placed.get('i-1')).toBe('h-2');
    expect(placed.get('i-2')).toBe('h-2');
    // h-2 is now at 4/8 vCPU, h-1 at 6/8: h-2 is still the emptier one.
    expect(placed.get('i-3')).toBe('h-2');
    // The input is not mutated.
    expect(hosts[1].used).toEqual(zero);
  });

  test('load is the fullest dimension, not the average', () => {
    expect(loadOf(big, { vcpu: 0, memoryMiB: 0, diskBytes: 3 * GiB })).toBe(0.75);
    expect(loadOf({ vcpu: 0, memoryMiB: 1, diskBytes: 1 }, { vcpu: 1, memoryMiB: 0, diskBytes: 0 })).toBe(
      Infinity,
    );
  });

  test('respects capacity in every dimension', () => {
    const diskPoor = host('h-1', { vcpu: 64, memoryMiB: 65536, diskBytes: GiB });
    const roomy = host('h-2', big, { vcpu: 6, memoryMiB: 0, diskBytes: 0 });
    const placed = placeInstances([diskPoor, roomy], requests(2));
    expect(placed.get('i-1')).toBe('h-1');
    // h-1's disk is now full, so i-2 goes to the busier h-2.
    expect(placed.get('i-2')).toBe('h-2');
  });

  test('throws a clear non-retryable NoCapacity when an instance fits nowhere', () => {
    const failure = expectFailureSync(
      () => placeInstances([host('h-1', big), host('h-2', big)], requests(9)),
      ErrorType.NoCapacity,
    );
    expect(failure.message).toContain('instance i-9');
    expect(failure.message).toContain('2 host(s)');
    expect(failure.message).toMatch(/fewer instances or more host capacity/);
  });

  test('no hosts means nothing fits', () => {
    expect(() => placeInstances([], requests(1))).toThrow(/fits on none of the 0 host/);
    expect(placeInstances([], [])).toEqual(new Map());
  });

  test('pickHost skips excluded and full hosts', () => {
    const hosts = [
      host('h-1', big),
      host('h-2', big, { vcpu: 7, memoryMiB: 0, diskBytes: 0 }),
      host('h-3', big),
    ];
    expect(pickHost(hosts, shape)).toBe('h-1');
    expect(pickHost(hosts, shape, ['h-1'])).toBe('h-3');
    expect(pickHost(hosts, shape, ['h-1', 'h-3'])).toBeUndefined();
  });

  test('shortfalls names each short dimension with what is free and needed', () => {
    const used = { vcpu: 6, memoryMiB: 16384, diskBytes: 0 };
    // 6 + 2 vCPU is exactly the capacity, so only memory is short.
    expect(shortfalls(big, used, shape)).toEqual([{ dimension: 'memoryMiB', free: 0, needed: 4096 }]);
    expect(shortfalls(big, used, { ...shape, vcpu: 3 })).toEqual([
      { dimension: 'vcpu', free: 2, needed: 3 },
      { dimension: 'memoryMiB', free: 0, needed: 4096 },
    ]);
    expect(fits(big, used, { ...shape, memoryMiB: 0 })).toBe(true);
    expect(fits(big, used, { ...shape, vcpu: 3, memoryMiB: 0 })).toBe(false);
  });

  test('formats sizes for messages', () => {
    expect(formatExactBytes(256 * MiB)).toBe('256 MiB');
    expect(formatExactBytes(16 * 1024 * GiB)).toBe('16 TiB');
    expect(formatExactBytes(1536)).toBe('1.5 KiB (1536 bytes)');
    expect(formatExactBytes(100)).toBe('100 bytes');
    expect(describeResources(shape)).toBe('2 vCPU, 4096 MiB of memory, 1 GiB of disk');
  });
});
