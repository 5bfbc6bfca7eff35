import Database from 'better-sqlite3';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  assertFleetSpec,
  assertId,
  assertResources,
  assertWorkloadConfig,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_WORKLOAD,
  invalidInput,
  invalidState,
  MAX_VOLUME_BYTES,
  noCapacity,
  notFound,
  SECTOR_SIZE,
  type CommitMigrationInput,
  type FleetLayout,
  type FleetSpec,
  type HostRecord,
  type InstanceRecord,
  type InstanceState,
  type ReservationRecord,
  type ReserveInput,
  type Resources,
  type VolumeRecord,
  type WorkloadConfig,
} from '../contracts';
import {
  addResources,
  formatAmount,
  formatExactBytes,
  placeInstances,
  shortfalls,
  subtractResources,
  ZERO_RESOURCES,
  type HostLoad,
} from '../planning/placement';
import {
  SCHEMA_V1,
  SCHEMA_VERSION,
  type FleetInitRow,
  type HostRow,
  type InstanceRow,
  type ReservationRow,
  type VolumeRow,
} from './inventory-schema';

export const INVENTORY_FILE = 'inventory.db';
export const ZONES = ['zone-a', 'zone-b', 'zone-c'];
export const DEFAULT_ACCOUNTS = ['acct-1', 'acct-2'];
export const DEFAULT_INSTANCE_SHAPE = { vcpu: 2, memoryMiB: 4096 };
const INSTANCE_STATES: InstanceState[] = ['pending', 'running', 'stopped'];
const LIST_HINT = '`rehome fleet list` shows what exists';

export interface HostUsage {
  capacity: Resources;
  used: Resources;
  free: Resources;
}

/** Every row of every table, ordered by key: equal snapshots mean an unchanged inventory. */
export interface InventorySnapshot {
  hosts: HostRow[];
  instances: InstanceRow[];
  volumes: VolumeRow[];
  reservations: ReservationRow[];
  fleetInits: FleetInitRow[];
}

export type InventoryProblemKind =
  | 'instance-on-unknown-host'
  | 'volume-of-unknown-instance'
  /** A volume is not on its instance's host. */
  | 'volume-placement'
  /** An instance's disk share is smaller than its volumes. */
  | 'disk-accounting'
  | 'reservation-on-unknown-host'
  | 'reservation-for-unknown-instance'
  /** A host's instances and reservations exceed its capacity (at no oversubscription). */
  | 'over-capacity';

/** One broken invariant: `subject` is the instance, volume, reservation key or host it is about. */
export interface InventoryProblem {
  kind: InventoryProblemKind;
  subject: string;
  message: string;
}

export function openInventory(dataDir: string): Inventory {
  return new Inventory(dataDir);
}

/**
 * The fleet's inventory in `<dataDir>/inventory.db`. Several processes (workers, CLI, tests) may
 * open the same file: every write that depends on what it read runs in one BEGIN IMMEDIATE
 * transaction, so two of them never decide on the same free capacity.
 */
export class Inventory {
  readonly dbPath: string;
  private readonly db: Database.Database;
  private readonly statements = new Map<string, Database.Statement>();

  constructor(readonly dataDir: string) {
    fs.mkdirSync(dataDir, { recursive: true });
    this.dbPath = path.join(dataDir, INVENTORY_FILE);
    this.db = new Database(this.dbPath);
    try {
      // busy_timeout first: switching to WAL and creating tables take locks other processes may hold.
      this.db.pragma('busy_timeout = 5000');
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      this.migrateSchema();
    } catch (err) {
      this.db.close();
      throw err;
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  // ---- reads -------------------------------------------------------------------------------

  getHost(hostId: string): HostRecord | undefined {
    const row = this.stmt('SELECT * FROM hosts WHERE id = ?').get(hostId) as HostRow | undefined;
    return row && toHost(row);
  }

  getInstance(instanceId: string): InstanceRecord | undefined {
    const row = this.stmt('SELECT * FROM instances WHERE id = ?').get(instanceId) as InstanceRow | undefined;
    return row && toInstance(row);
  }

  getVolume(volumeId: string): VolumeRecord | undefined {
    const row = this.stmt('SELECT * FROM volumes WHERE id = ?').get(volumeId) as VolumeRow | undefined;
    return row && toVolume(row);
  }

  getReservation(key: string): ReservationRecord | undefined {
    const row = this.stmt('SELECT * FROM reservations WHERE key = ?').get(key) as ReservationRow | undefined;
    return row && toReservation(row);
  }

  /** The record, or NotFound telling the operator how to see what exists. */
  requireHost(hostId: string): HostRecord {
    const host = this.getHost(hostId);
    if (!host) throw notFound(`host ${hostId} not found: ${LIST_HINT}`);
    return host;
  }

  requireInstance(instanceId: string): InstanceRecord {
    const instance = this.getInstance(instanceId);
    if (!instance) throw notFound(`instance ${instanceId} not found: ${LIST_HINT}`);
    return instance;
  }

  requireVolume(volumeId: string): VolumeRecord {
    const volume = this.getVolume(volumeId);
    if (!volume) throw notFound(`volume ${volumeId} not found: ${LIST_HINT}`);
    return volume;
  }

  listHosts(): HostRecord[] {
    const rows = this.stmt('SELECT * FROM hosts').all() as HostRow[];
    return rows.map(toHost).sort(byId((h) => h.hostId));
  }

  listInstances(filter: { hostId?: string; account?: string } = {}): InstanceRecord[] {
    const rows = this.stmt('SELECT * FROM instances').all() as InstanceRow[];
    return rows
      .map(toInstance)
      .filter((i) => filter.hostId === undefined || i.hostId === filter.hostId)
      .filter((i) => filter.account === undefined || i.account === filter.account)
      .sort(byId((i) => i.instanceId));
  }

  listVolumes(filter: { instanceId?: string; hostId?: string } = {}): VolumeRecord[] {
    const rows = this.stmt('SELECT * FROM volumes').all() as VolumeRow[];
    return rows
      .map(toVolume)
      .filter((v) => filter.instanceId === undefined || v.instanceId === filter.instanceId)
      .filter((v) => filter.hostId === undefined || v.hostId === filter.hostId)
      .sort(byId((v) => v.volumeId));
  }

  /**
   * The host an instance is placed on, when that is not `hostId` and no reservation (a migration or
   * restore in flight) is moving it to `hostId`; undefined otherwise, and for an unknown instance.
   */
  placedElsewhere(instanceId: string, hostId: string): string | undefined {
    const placed = this.getInstance(instanceId)?.hostId;
    if (placed === undefined || placed === hostId) return undefined;
    const movingHere = this.listReservations({ hostId }).some((r) => r.instanceId === instanceId);
    return movingHere ? undefined : placed;
  }

  listReservations(filter: { hostId?: string } = {}): ReservationRecord[] {
    const rows = this.stmt('SELECT * FROM reservations').all() as ReservationRow[];
    return rows
      .map(toReservation)
      .filter((r) => filter.hostId === undefined || r.hostId === filter.hostId)
      .sort(byId((r) => r.key));
  }

  /** Used = the shapes of the host's instances plus its reservations. Throws NotFound for an unknown host. */
  hostUsage(hostId: string): HostUsage {
    const host = this.requireHost(hostId);
    const used = this.usedOn(hostId);
    return { capacity: host.capacity, used, free: subtractResources(host.capacity, used) };
  }

  /** Every host with its usage, in the shape placement takes. */
  hostLoads(): HostLoad[] {
    return this.listHosts().map((h) => ({
      hostId: h.hostId,
      capacity: h.capacity,
      used: this.usedOn(h.hostId),
    }));
  }

  snapshot(): InventorySnapshot {
    return this.db.transaction(() => ({
      hosts: this.stmt('SELECT * FROM hosts ORDER BY id').all() as HostRow[],
      instances: this.stmt('SELECT * FROM instances ORDER BY id').all() as InstanceRow[],
      volumes: this.stmt('SELECT * FROM volumes ORDER BY id').all() as VolumeRow[],
      reservations: this.stmt('SELECT * FROM reservations ORDER BY key').all() as ReservationRow[],
      fleetInits: this.stmt('SELECT * FROM fleet_inits ORDER BY key').all() as FleetInitRow[],
    }))();
  }

  /** Broken invariants, one sentence each; empty when the inventory is consistent. */
  checkConsistency(): string[] {
    return this.problems().map((p) => p.message);
  }

  /** As checkConsistency, each with what it is about, for callers that sort them (fleet check). */
  problems(): InventoryProblem[] {
    return this.db.transaction(() => {
      const problems: InventoryProblem[] = [];
      const add = (kind: InventoryProblemKind, subject: string, message: string) =>
        problems.push({ kind, subject, message });
      const hosts = new Map(this.listHosts().map((h) => [h.hostId, h]));
      const instances = new Map(this.listInstances().map((i) => [i.instanceId, i]));
      const volumeBytes = new Map<string, number>();
      for (const i of instances.values()) {
        if (!hosts.has(i.hostId)) {
          add(
            'instance-on-unknown-host',
            i.instanceId,
            `instance ${i.instanceId} is on host ${i.hostId}, which does not exist`,
          );
        }
      }
      for (const v of this.listVolumes()) {
        const owner = instances.get(v.instanceId);
        if (!owner) {
          add(
            'volume-of-unknown-instance',
            v.volumeId,
            `volume ${v.volumeId} belongs to instance ${v.instanceId}, which does not exist`,
          );
          continue;
        }
        if (owner.hostId !== v.hostId) {
          add(
            'volume-placement',
            v.volumeId,
            `volume ${v.volumeId} is on ${v.hostId} but its instance ${v.instanceId} is on ${owner.hostId}`,
          );
        }
        volumeBytes.set(v.instanceId, (volumeBytes.get(v.instanceId) ?? 0) + v.sizeBytes);
      }
      for (const [instanceId, bytes] of volumeBytes) {
        const shape = instances.get(instanceId)!.shape;
        if (shape.diskBytes < bytes) {
          add(
            'disk-accounting',
            instanceId,
            `instance ${instanceId} counts ${formatExactBytes(shape.diskBytes)} of disk but its volumes hold ${formatExactBytes(bytes)}`,
          );
        }
      }
      for (const r of this.listReservations()) {
        if (!hosts.has(r.hostId)) {
          add(
            'reservation-on-unknown-host',
            r.key,
            `reservation ${r.key} is on host ${r.hostId}, which does not exist`,
          );
        }
        if (!instances.has(r.instanceId)) {
          add(
            'reservation-for-unknown-instance',
            r.key,
            `reservation ${r.key} is for instance ${r.instanceId}, which does not exist`,
          );
        }
      }
      for (const h of hosts.values()) {
        const used = this.usedOn(h.hostId);
        for (const s of shortfalls(h.capacity, used, ZERO_RESOURCES)) {
          add(
            'over-capacity',
            h.hostId,
            `host ${h.hostId} is over capacity: ${formatAmount(s.dimension, used[s.dimension])} used of ` +
              `${formatAmount(s.dimension, h.capacity[s.dimension])}`,
          );
        }
      }
      return problems;
    })();
  }

  // ---- capacity ----------------------------------------------------------------------------

  /**
   * Reserves room on a host for an instance, keyed by the asking workflow: the same key returns
   * the same reservation, so a retried activity never reserves twice.
   */
  reserve(input: ReserveInput): ReservationRecord {
    const key = assertKey(input.key);
    const request = assertResources('resources', input.resources);
    return this.db
      .transaction((): ReservationRecord => {
        const existing = this.getReservation(key);
        if (existing) {
          if (existing.hostId !== input.hostId || existing.instanceId !== input.instanceId) {
            throw invalidInput(
              `reservation ${key} already holds ${existing.hostId} for instance ${existing.instanceId}, ` +
                `not ${input.hostId} for ${input.instanceId}: release it first or reserve under another key`,
            );
          }
          return existing;
        }
        const host = this.requireHost(input.hostId);
        const short = shortfalls(host.capacity, this.usedOn(host.hostId), request);
        if (short.length > 0) {
          const free = short.map((s) => formatAmount(s.dimension, s.free)).join(' and ');
          const needed = short.map((s) => formatAmount(s.dimension, s.needed)).join(' and ');
          throw noCapacity(
            `host ${host.hostId} has ${free} free, instance ${input.instanceId} needs ${needed}: ` +
              `choose another target (\`rehome fleet list\` shows free capacity) or make room on ${host.hostId}`,
          );
        }
        this.stmt(
          `INSERT INTO reservations (key, host_id, instance_id, vcpu, memory_mib, disk_bytes, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?)`,
        ).run(
          key,
          host.hostId,
          input.instanceId,
          request.vcpu,
          request.memoryMiB,
          request.diskBytes,
          new Date().toISOString(),
        );
        return { key, hostId: host.hostId, instanceId: input.instanceId, resources: request };
      })
      .immediate();
  }

  /** Drops a reservation; true if there was one. Releasing twice is fine. */
  release(key: string): boolean {
    return this.stmt('DELETE FROM reservations WHERE key = ?').run(assertKey(key)).changes > 0;
  }

  /**
   * Moves the instance and its volumes to the target and drops the reservation, in one transaction.
   * Running it again after it succeeded changes nothing.
   */
  commitMigration(input: CommitMigrationInput): void {
    const key = assertKey(input.key);
    this.db
      .transaction(() => {
        const instance = this.requireInstance(input.instanceId);
        const reservation = this.getReservation(key);
        if (
          reservation &&
          (reservation.hostId !== input.targetHostId || reservation.instanceId !== input.instanceId)
        ) {
          throw invalidInput(
            `reservation ${key} holds ${reservation.hostId} for instance ${reservation.instanceId}, ` +
              `not ${input.targetHostId} for ${input.instanceId}`,
          );
        }
        if (instance.hostId === input.targetHostId) {
          this.release(key);
          return;
        }
        if (instance.hostId !== input.sourceHostId) {
          throw invalidState(
            `instance ${instance.instanceId} is on ${instance.hostId}, neither the source ${input.sourceHostId} ` +
              `nor the target ${input.targetHostId} of this migration: nothing was moved`,
          );
        }
        const target = this.requireHost(input.targetHostId);
        if (!reservation) {
          // Without a reservation the room may have gone meanwhile: check rather than overcommit.
          const short = shortfalls(target.capacity, this.usedOn(target.hostId), instance.shape);
          if (short.length > 0) {
            throw noCapacity(
              `host ${target.hostId} no longer has room for instance ${instance.instanceId} ` +
                `(short of ${short.map((s) => formatAmount(s.dimension, s.needed - s.free)).join(' and ')}) ` +
                `and reservation ${key} is gone: the instance stays on ${instance.hostId}`,
            );
          }
        }
        this.stmt('UPDATE instances SET host_id = ? WHERE id = ?').run(target.hostId, instance.instanceId);
        this.stmt('UPDATE volumes SET host_id = ? WHERE instance_id = ?').run(
          target.hostId,
          instance.instanceId,
        );
        this.release(key);
      })
      .immediate();
  }

  // ---- fleet and instances -----------------------------------------------------------------

  /**
   * Records a new fleet (hosts, pending instances, one volume each), keyed by the asking workflow:
   * the same key returns the layout it made. A data directory holds one fleet.
   */
  createFleet(key: string, spec: FleetSpec): FleetLayout {
    assertKey(key);
    return this.db
      .transaction((): FleetLayout => {
        const stored = this.stmt('SELECT layout FROM fleet_inits WHERE key = ?').get(key) as
          { layout: string } | undefined;
        if (stored) return JSON.parse(stored.layout) as FleetLayout;
        const { n } = this.stmt('SELECT COUNT(*) AS n FROM hosts').get() as { n: number };
        if (n > 0) {
          throw invalidState(
            `a fleet already exists in ${this.dataDir} (${n} hosts); use another --data-dir or delete it`,
          );
        }
        const layout = planFleet(spec);
        const insertHost = this.stmt(
          'INSERT INTO hosts (id, zone, vcpu, memory_mib, disk_bytes) VALUES (?, ?, ?, ?, ?)',
        );
        for (const h of layout.hosts) {
          insertHost.run(h.hostId, h.zone, h.capacity.vcpu, h.capacity.memoryMiB, h.capacity.diskBytes);
        }
        for (const i of layout.instances) this.insertInstance(i);
        for (const v of layout.volumes) this.insertVolume(v);
        this.stmt('INSERT INTO fleet_inits (key, layout, created_at) VALUES (?, ?, ?)').run(
          key,
          JSON.stringify(layout),
          new Date().toISOString(),
        );
        return layout;
      })
      .immediate();
  }

  /** All or nothing: an unknown id leaves every instance as it was. */
  markInstancesRunning(instanceIds: string[]): void {
    this.db
      .transaction(() => {
        for (const id of instanceIds) this.setInstanceState(id, 'running');
      })
      .immediate();
  }

  setInstanceState(instanceId: string, state: InstanceState): void {
    if (!INSTANCE_STATES.includes(state)) {
      throw invalidInput(
        `instance state ${JSON.stringify(state)} is not one of ${INSTANCE_STATES.join(', ')}`,
      );
    }
    this.requireInstance(instanceId);
    this.stmt('UPDATE instances SET state = ? WHERE id = ?').run(state, instanceId);
  }

  /**
   * Records a volume on its instance's host and grows the instance's disk shape by its size, so
   * host usage keeps counting it. Adding the same volume again is a no-op (returns false).
   */
  addVolume(volume: VolumeRecord, reservationKey?: string): boolean {
    const v = assertVolume(volume);
    return this.db
      .transaction((): boolean => {
        // The room the reservation held is what the volume now takes: drop it first, in this transaction.
        if (reservationKey !== undefined) this.release(reservationKey);
        const existing = this.getVolume(v.volumeId);
        if (existing) {
          if (JSON.stringify(existing) !== JSON.stringify(v)) {
            throw invalidState(
              `volume ${v.volumeId} already exists with different settings (${formatExactBytes(existing.sizeBytes)} ` +
                `on ${existing.hostId} for ${existing.instanceId}): pick another volume id`,
            );
          }
          return false;
        }
        const instance = this.requireInstance(v.instanceId);
        if (instance.hostId !== v.hostId) {
          throw invalidState(
            `volume ${v.volumeId} is meant for ${v.hostId} but instance ${v.instanceId} is on ${instance.hostId}`,
          );
        }
        const host = this.requireHost(v.hostId);
        const request = { ...ZERO_RESOURCES, diskBytes: v.sizeBytes };
        const [short] = shortfalls(host.capacity, this.usedOn(host.hostId), request);
        if (short) {
          throw noCapacity(
            `host ${host.hostId} has ${formatAmount('diskBytes', short.free)} free, volume ${v.volumeId} ` +
              `needs ${formatAmount('diskBytes', short.needed)}: use a smaller image or migrate the instance first`,
          );
        }
        this.insertVolume(v);
        this.stmt('UPDATE instances SET disk_bytes = disk_bytes + ? WHERE id = ?').run(
          v.sizeBytes,
          v.instanceId,
        );
        return true;
      })
      .immediate();
  }

  // ---- internals ---------------------------------------------------------------------------

  private migrateSchema(): void {
    this.db
      .transaction(() => {
        const version = this.db.pragma('user_version', { simple: true }) as number;
        if (version > SCHEMA_VERSION) {
          throw invalidState(
            `${this.dbPath} was written by a newer rehome (schema ${version}, this one knows ${SCHEMA_VERSION}): upgrade rehome`,
          );
        }
        if (version < 1) this.db.exec(SCHEMA_V1);
        this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
      })
      .immediate();
  }

  private stmt(sql: string): Database.Statement {
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }

  private usedOn(hostId: string): Resources {
    const sum = `SELECT COALESCE(SUM(vcpu), 0) AS vcpu, COALESCE(SUM(memory_mib), 0) AS memoryMiB,
                 COALESCE(SUM(disk_bytes), 0) AS diskBytes FROM`;
    const instances = this.stmt(`${sum} instances WHERE host_id = ?`).get(hostId) as Resources;
    const reservations = this.stmt(`${sum} reservations WHERE host_id = ?`).get(hostId) as Resources;
    return addResources(instances, reservations);
  }

  private insertInstance(i: InstanceRecord): void {
    this.stmt(
      `INSERT INTO instances (id, account, host_id, vcpu, memory_mib, disk_bytes, state, tags, workload)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(
      i.instanceId,
      i.account,
      i.hostId,
      i.shape.vcpu,
      i.shape.memoryMiB,
      i.shape.diskBytes,
      i.state,
      JSON.stringify(i.tags),
      JSON.stringify(i.workload),
    );
  }

  private insertVolume(v: VolumeRecord): void {
    this.stmt(
      `INSERT INTO volumes (id, instance_id, host_id, size_bytes, block_size, kind, user_data)
       VALUES (?, ?, ?, ?, ?, ?, ?)`,
    ).run(v.volumeId, v.instanceId, v.hostId, v.sizeBytes, v.blockSize, v.kind, v.userData ? 1 : 0);
  }
}

// ---- fleet layout (pure) -------------------------------------------------------------------

/** Validates a fleet spec and lays it out; throws InvalidInput (or NoCapacity) saying what to change. */
export function planFleet(spec: FleetSpec): FleetLayout {
  const { hosts, instances, volumeSizeBytes, ...options } = assertFleetSpec(spec);
  const accounts = options.accounts ?? DEFAULT_ACCOUNTS;
  // Checked again with the defaults filled in: the checks also return the fields in a fixed order.
  const workload = assertWorkloadConfig('workload', options.workload ?? DEFAULT_WORKLOAD);
  const shapeIn = options.instanceShape ?? DEFAULT_INSTANCE_SHAPE;
  const shape: Resources = { vcpu: shapeIn.vcpu, memoryMiB: shapeIn.memoryMiB, diskBytes: volumeSizeBytes };
  // Twice each host's share, so every instance has somewhere to migrate to.
  const share = Math.max(1, Math.ceil(instances / hosts));
  const defaultCapacity: Resources = {
    vcpu: shape.vcpu * 2 * share,
    memoryMiB: shape.memoryMiB * 2 * share,
    diskBytes: shape.diskBytes * 2 * share,
  };
  // A huge default (big volumes, many instances per host) can exceed what a double counts exactly.
  const capacity = assertResources('hostCapacity', options.hostCapacity ?? defaultCapacity);

  const hostRecords: HostRecord[] = Array.from({ length: hosts }, (_, n) => ({
    hostId: `h-${n + 1}`,
    zone: ZONES[n % ZONES.length],
    capacity: { ...capacity },
  }));
  const requests = Array.from({ length: instances }, (_, n) => ({
    instanceId: `i-${n + 1}`,
    resources: shape,
  }));
  const placement = placeInstances(
    hostRecords.map((h) => ({ hostId: h.hostId, capacity: h.capacity, used: ZERO_RESOURCES })),
    requests,
  );
  const instanceRecords: InstanceRecord[] = requests.map((r, n) => ({
    instanceId: r.instanceId,
    account: accounts[n % accounts.length],
    hostId: placement.get(r.instanceId)!,
    shape: { ...shape },
    state: 'pending',
    tags: {},
    workload: { ...workload },
  }));
  const volumes: VolumeRecord[] = instanceRecords.map((i) => ({
    volumeId: `${i.instanceId}-v0`,
    instanceId: i.instanceId,
    hostId: i.hostId,
    sizeBytes: volumeSizeBytes,
    blockSize: DEFAULT_BLOCK_SIZE,
    kind: 'instance-store',
    userData: false,
  }));
  return { hosts: hostRecords, instances: instanceRecords, volumes };
}

// ---- validation and row mapping --------------------------------------------------------------

function assertKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0 || key.length > 1000) {
    throw invalidInput(
      `key ${String(key).slice(0, 80)} must be a non-empty string of at most 1000 characters`,
    );
  }
  return key;
}

function assertVolume(v: VolumeRecord): VolumeRecord {
  assertId('volumeId', v?.volumeId);
  assertId('instanceId', v.instanceId);
  assertId('hostId', v.hostId);
  if (!Number.isSafeInteger(v.sizeBytes) || v.sizeBytes <= 0 || v.sizeBytes > MAX_VOLUME_BYTES) {
    throw invalidInput(
      `volume size ${String(v.sizeBytes)} is not allowed: use 1 byte to ${formatExactBytes(MAX_VOLUME_BYTES)}`,
    );
  }
  if (v.sizeBytes % SECTOR_SIZE !== 0) {
    throw invalidInput(`volume size ${v.sizeBytes} is not a multiple of ${SECTOR_SIZE} bytes`);
  }
  if (!Number.isSafeInteger(v.blockSize) || v.blockSize <= 0 || v.blockSize % SECTOR_SIZE !== 0) {
    throw invalidInput(`block size ${String(v.blockSize)} is not a positive multiple of ${SECTOR_SIZE}`);
  }
  if (v.kind !== 'instance-store')
    throw invalidInput(`volume kind ${String(v.kind)} is not "instance-store"`);
  if (typeof v.userData !== 'boolean') throw invalidInput('volume userData must be true or false');
  // A fixed key order, so a stored volume and a retried request compare equal.
  return {
    volumeId: v.volumeId,
    instanceId: v.instanceId,
    hostId: v.hostId,
    sizeBytes: v.sizeBytes,
    blockSize: v.blockSize,
    kind: v.kind,
    userData: v.userData,
  };
}

const collator = new Intl.Collator('en', { numeric: true });

/** Natural order, so h-2 comes before h-10. */
function byId<T>(id: (item: T) => string): (a: T, b: T) => number {
  return (a, b) => collator.compare(id(a), id(b)) || (id(a) < id(b) ? -1 : id(a) > id(b) ? 1 : 0);
}

function toHost(row: HostRow): HostRecord {
  return {
    hostId: row.id,
    zone: row.zone,
    capacity: { vcpu: row.vcpu, memoryMiB: row.memory_mib, diskBytes: row.disk_bytes },
  };
}

function toInstance(row: InstanceRow): InstanceRecord {
  return {
    instanceId: row.id,
    account: row.account,
    hostId: row.host_id,
    shape: { vcpu: row.vcpu, memoryMiB: row.memory_mib, diskBytes: row.disk_bytes },
    state: row.state as InstanceState,
    tags: JSON.parse(row.tags) as Record<string, string>,
    workload: JSON.parse(row.workload) as WorkloadConfig,
  };
}

function toVolume(row: VolumeRow): VolumeRecord {
  return {
    volumeId: row.id,
    instanceId: row.instance_id,
    hostId: row.host_id,
    sizeBytes: row.size_bytes,
    blockSize: row.block_size,
    kind: row.kind as VolumeRecord['kind'],
    userData: row.user_data === 1,
  };
}

function toReservation(row: ReservationRow): ReservationRecord {
  return {
    key: row.key,
    hostId: row.host_id,
    instanceId: row.instance_id,
    resources: { vcpu: row.vcpu, memoryMiB: row.memory_mib, diskBytes: row.disk_bytes },
  };
}
