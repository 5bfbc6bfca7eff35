import { noCapacity, type Resources } from '../contracts';

/** A host as placement sees it: what it has and what is already taken (instances plus reservations). */
export interface HostLoad {
  hostId: string;
  capacity: Resources;
  used: Resources;
}

export interface PlacementRequest {
  instanceId: string;
  resources: Resources;
}

export interface Shortfall {
  dimension: keyof Resources;
  free: number;
  needed: number;
}

const DIMENSIONS: (keyof Resources)[] = ['vcpu', 'memoryMiB', 'diskBytes'];

export const ZERO_RESOURCES: Resources = { vcpu: 0, memoryMiB: 0, diskBytes: 0 };

export function addResources(a: Resources, b: Resources): Resources {
  return {
    vcpu: a.vcpu + b.vcpu,
    memoryMiB: a.memoryMiB + b.memoryMiB,
    diskBytes: a.diskBytes + b.diskBytes,
  };
}

export function subtractResources(a: Resources, b: Resources): Resources {
  return {
    vcpu: a.vcpu - b.vcpu,
    memoryMiB: a.memoryMiB - b.memoryMiB,
    diskBytes: a.diskBytes - b.diskBytes,
  };
}

/** The dimensions in which `request` does not fit next to `used`; empty when it fits. */
export function shortfalls(capacity: Resources, used: Resources, request: Resources): Shortfall[] {
  return DIMENSIONS.filter((d) => used[d] + request[d] > capacity[d]).map((d) => ({
    dimension: d,
    free: Math.max(0, capacity[d] - used[d]),
    needed: request[d],
  }));
}

export function fits(capacity: Resources, used: Resources, request: Resources): boolean {
  return shortfalls(capacity, used, request).length === 0;
}

/**
 * How full a host is: its fullest dimension, as a fraction. Using the fullest dimension (not the
 * average) keeps one scarce resource from being exhausted on a host that looks empty otherwise.
 */
export function loadOf(capacity: Resources, used: Resources): number {
  let load = 0;
  for (const d of DIMENSIONS) {
    const share = capacity[d] > 0 ? used[d] / capacity[d] : used[d] > 0 ? Infinity : 0;
    load = Math.max(load, share);
  }
  return load;
}

/** The least-loaded host `request` fits on (ties go to the earlier host), or undefined. */
export function pickHost(
  hosts: HostLoad[],
  request: Resources,
  excludeHostIds: string[] = [],
): string | undefined {
  let best: { hostId: string; load: number } | undefined;
  for (const host of hosts) {
    if (excludeHostIds.includes(host.hostId) || !fits(host.capacity, host.used, request)) continue;
    const load = loadOf(host.capacity, host.used);
    if (!best || load < best.load) best = { hostId: host.hostId, load };
  }
  return best?.hostId;
}

/**
 * Spreads instances over hosts, each on the least-loaded host it fits on, in request order.
 * Returns instanceId -> hostId. Throws a non-retryable NoCapacity failure when one does not fit.
 */
export function placeInstances(hosts: HostLoad[], requests: PlacementRequest[]): Map<string, string> {
  const loads = hosts.map((h) => ({ ...h, used: { ...h.used } }));
  const placement = new Map<string, string>();
  for (const request of requests) {
    const hostId = pickHost(loads, request.resources);
    if (hostId === undefined) {
      throw noCapacity(
        `instance ${request.instanceId} (${describeResources(request.resources)}) fits on none of the ` +
          `${hosts.length} host(s)${describeRoomiest(loads)}: ask for fewer instances or more host capacity`,
      );
    }
    const host = loads.find((h) => h.hostId === hostId)!;
    host.used = addResources(host.used, request.resources);
    placement.set(request.instanceId, hostId);
  }
  return placement;
}

function describeRoomiest(loads: HostLoad[]): string {
  if (loads.length === 0) return '';
  const roomiest = loads.reduce((a, b) => (loadOf(b.capacity, b.used) < loadOf(a.capacity, a.used) ? b : a));
  return ` (the emptiest, ${roomiest.hostId}, has ${describeResources(subtractResources(roomiest.capacity, roomiest.used))} free)`;
}

/** For capacity messages, exact to the byte when not round: "1.5 KiB (1536 bytes)". */
export function formatExactBytes(bytes: number): string {
  const units: [string, number][] = [
    ['TiB', 1024 ** 4],
    ['GiB', 1024 ** 3],
    ['MiB', 1024 ** 2],
    ['KiB', 1024],
  ];
  for (const [unit, size] of units) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  for (const [unit, size] of units) {
    if (bytes >= size) return `${(bytes / size).toFixed(1)} ${unit} (${bytes} bytes)`;
  }
  return `${bytes} bytes`;
}

export function formatAmount(dimension: keyof Resources, amount: number): string {
  if (dimension === 'vcpu') return `${amount} vCPU`;
  if (dimension === 'memoryMiB') return `${amount} MiB of memory`;
  return `${formatExactBytes(amount)} of disk`;
}

export function describeResources(r: Resources): string {
  return DIMENSIONS.map((d) => formatAmount(d, r[d])).join(', ');
}
