import * as fs from 'node:fs';
import * as path from 'node:path';
import { isValidId, type HostRecord, type ReservationRecord, type Resources } from '../contracts';
import {
  addResources,
  describeResources,
  formatAmount,
  formatExactBytes,
  ZERO_RESOURCES,
} from '../planning/placement';
import { parseTempName, processAlive } from './atomic-file';
import type { InstanceRecord as HostInstanceRecord } from './host-agent';
import { HostStore, type VolumeSidecar } from './host-store';
import type { Inventory } from './inventory';
import { capturesDir } from './volume-capture';

/**
 * The fleet's invariants, checked against the inventory and every host's disk: what `rehome fleet
 * check` prints and what the fault tests assert after their chaos. Read-only: it reports, it never
 * repairs, so an operator (or a test) sees exactly what a crash or a bug left behind.
 */

export type FleetViolationKind =
  /** The inventory's own consistency (Inventory.checkConsistency), e.g. a volume of an unknown instance. */
  | 'inventory'
  /** An instance is not on exactly one host: unknown host, running on two, or no record where it should run. */
  | 'instance-placement'
  /** Instances plus reservations exceed a host's capacity times its oversubscription ratio. */
  | 'over-capacity'
  /** The inventory's own usage figure disagrees with its instances plus reservations. */
  | 'usage-mismatch'
  | 'missing-image'
  | 'image-size'
  /** The sidecar next to an image is missing or disagrees with the inventory. */
  | 'sidecar-mismatch'
  /** An image (or replica, spill, restore or temp file, reservation, instance record) nothing owns. */
  | 'orphan-image'
  | 'orphan-replica'
  | 'orphan-spill'
  | 'orphan-restore'
  | 'orphan-temp'
  | 'orphan-reservation'
  | 'orphan-instance-record';

export interface FleetViolation {
  kind: FleetViolationKind;
  /** What it is about: a host, instance, volume, reservation key or file (relative to the data dir). */
  subject: string;
  /** One sentence an operator can act on. */
  message: string;
}

export interface CheckFleetOptions {
  dataDir: string;
  inventory: Inventory;
  /**
   * Which of these workflow ids are still running. Without it every workflow that holds a
   * reservation counts as running: reservations are then not checked against workflows.
   */
  activeWorkflowIds?: (ids: string[]) => Promise<Set<string>> | Set<string>;
}

/** Oversubscription until burst scheduling exists: reservations must fit the capacity itself. */
export const DEFAULT_OVERSUBSCRIPTION_RATIO = 1;

/**
 * How far a host's instances and reservations may exceed its capacity. Hosts carry no ratio yet;
 * burst scheduling will add one to the host record, and this is the one place that reads it.
 */
export function oversubscriptionRatio(host: HostRecord): number {
  const ratio = (host as HostRecord & { oversubscriptionRatio?: unknown }).oversubscriptionRatio;
  return typeof ratio === 'number' && Number.isFinite(ratio) && ratio >= 1
    ? ratio
    : DEFAULT_OVERSUBSCRIPTION_RATIO;
}

/** `<volumeId>.<captureId>.<pid>.spill`, as volume-capture.ts names its spill files. */
const SPILL_NAME = /^([a-z0-9-]+)\.([a-z0-9-]+)\.(\d+)\.spill$/;
const VOLUME_FILE = /^(.+)\.(img|json|map)$/;

/** Every broken invariant of the fleet in `dataDir`; empty when all hold. */
export async function checkFleet(opts: CheckFleetOptions): Promise<FleetViolation[]> {
  const check = new FleetCheck(opts);
  await check.resolveWorkflows();
  return check.run();
}

interface DiskVolume {
  hostId: string;
  volumeId: string;
  files: Set<'img' | 'json' | 'map'>;
}

class FleetCheck {
  private readonly violations: FleetViolation[] = [];
  private readonly inventory: Inventory;
  private readonly dataDir: string;
  private readonly reservations: ReservationRecord[];
  private readonly hostIds: string[];
  /** Instance records of the host agents, by host. */
  private readonly records = new Map<string, HostInstanceRecord[]>();
  private readonly fleetInitKeys: string[];
  /** Sidecars read so far by host and volume (null: unreadable, reported once). */
  private readonly sidecars = new Map<string, VolumeSidecar | undefined | null>();
  /** Undefined: no lookup given, so a workflow holding a reservation counts as running. */
  private running?: Set<string>;

  constructor(private readonly opts: CheckFleetOptions) {
    this.inventory = opts.inventory;
    this.dataDir = opts.dataDir;
    this.reservations = this.inventory.listReservations();
    const onDisk = listDir(path.join(this.dataDir, 'hosts')).filter(isValidId);
    // A host id that is not a valid id has no directory to look in (checkConsistency reports its rows).
    const known = this.inventory
      .listHosts()
      .map((h) => h.hostId)
      .filter(isValidId);
    this.hostIds = [...new Set([...known, ...onDisk])];
    for (const hostId of this.hostIds) this.records.set(hostId, this.readRecords(hostId));
    this.fleetInitKeys = this.inventory.snapshot().fleetInits.map((f) => f.key);
  }

  /** One lookup for every workflow id the fleet's state names. */
  async resolveWorkflows(): Promise<void> {
    if (!this.opts.activeWorkflowIds) return;
    const ids = new Set(this.reservations.map((r) => r.key));
    for (const records of this.records.values()) {
      for (const r of records) {
        if (r.migration) ids.add(r.migration.migrationId);
        if (r.restored) ids.add(r.restored.restoreId);
      }
    }
    for (const hostId of this.hostIds) {
      for (const restoreId of listDir(path.join(this.hostRoot(hostId), 'restores'))) ids.add(restoreId);
    }
    for (const key of this.fleetInitKeys) ids.add(key);
    this.running = new Set(await this.opts.activeWorkflowIds([...ids].sort()));
  }

  run(): FleetViolation[] {
    this.checkInventory();
    this.checkCapacity();
    this.checkReservations();
    this.checkInstances();
    this.checkVolumes();
    for (const hostId of this.hostIds) this.checkHostDisk(hostId);
    return this.violations;
  }

  // ---- inventory -------------------------------------------------------------------------------

  private checkInventory(): void {
    for (const { kind, subject, message } of this.inventory.problems()) {
      // Capacity is checked here with the host's oversubscription ratio, not the inventory's ratio of 1.
      if (kind === 'over-capacity') continue;
      this.add(kind === 'instance-on-unknown-host' ? 'instance-placement' : 'inventory', subject, message);
    }
  }

  private checkCapacity(): void {
    const instances = this.inventory.listInstances();
    for (const host of this.inventory.listHosts()) {
      const onHost = instances.filter((i) => i.hostId === host.hostId);
      const reserved = this.reservations.filter((r) => r.hostId === host.hostId);
      const used = [...onHost.map((i) => i.shape), ...reserved.map((r) => r.resources)].reduce(
        addResources,
        ZERO_RESOURCES,
      );
      const reported = this.inventory.hostUsage(host.hostId).used;
      if (!sameResources(used, reported)) {
        this.add(
          'usage-mismatch',
          host.hostId,
          `host ${host.hostId}: the inventory reports ${describeResources(reported)} used, but its instances and reservations add up to ${describeResources(used)}: the inventory's usage query is wrong`,
        );
      }
      const ratio = oversubscriptionRatio(host);
      for (const d of Object.keys(ZERO_RESOURCES) as (keyof Resources)[]) {
        const limit = Math.floor(host.capacity[d] * ratio);
        if (used[d] <= limit) continue;
        const keys = reserved.map((r) => r.key);
        this.add(
          'over-capacity',
          host.hostId,
          `host ${host.hostId} is over capacity: ${formatAmount(d, used[d])} used of ${formatAmount(d, limit)}` +
            `${ratio === 1 ? '' : ` (capacity × ${ratio})`} by ${onHost.length} instance(s)` +
            `${keys.length ? ` and reservation(s) ${keys.join(', ')}` : ''}: migrate an instance away or release an orphan reservation`,
        );
      }
    }
  }

  private checkReservations(): void {
    if (!this.running) return;
    for (const r of this.reservations) {
      if (this.running.has(r.key)) continue;
      this.add(
        'orphan-reservation',
        r.key,
        `reservation ${r.key} holds ${describeResources(r.resources)} on ${r.hostId} for ${r.instanceId}, but workflow ${r.key} is not running: ` +
          `nothing will release it; delete it (DELETE FROM reservations WHERE key = '${r.key}' in ${this.inventory.dbPath})`,
      );
    }
  }

  // ---- instances -------------------------------------------------------------------------------

  private checkInstances(): void {
    const inventoryInstances = new Map(this.inventory.listInstances().map((i) => [i.instanceId, i]));
    const runningOn = new Map<string, string[]>();
    for (const [hostId, records] of this.records) {
      for (const record of records) {
        if (record.state === 'running') {
          runningOn.set(record.instanceId, [...(runningOn.get(record.instanceId) ?? []), hostId]);
        }
        const instance = inventoryInstances.get(record.instanceId);
        if (instance?.hostId === hostId || this.ownedOnHost(hostId, record.instanceId)) continue;
        const where = instance
          ? `the inventory has it on ${instance.hostId}`
          : 'the inventory does not know it';
        this.add(
          'orphan-instance-record',
          this.rel(this.recordPath(hostId, record.instanceId)),
          `host ${hostId} keeps a record of instance ${record.instanceId} (state ${record.state}) but ${where}, and no running migration or restore owns it: ` +
            `stop it there and delete ${this.rel(this.recordPath(hostId, record.instanceId))}`,
        );
      }
    }
    for (const [instanceId, hosts] of runningOn) {
      if (hosts.length < 2) continue;
      this.add(
        'instance-placement',
        instanceId,
        `instance ${instanceId} runs on ${hosts.length} hosts (${hosts.join(', ')}): two copies are writing; stop every copy but the inventory's (${inventoryInstances.get(instanceId)?.hostId ?? 'none'})`,
      );
    }
    for (const instance of inventoryInstances.values()) {
      if (instance.state !== 'running' || this.moving(instance.instanceId)) continue;
      const hostRecords = this.records.get(instance.hostId) ?? [];
      if (hostRecords.some((r) => r.instanceId === instance.instanceId)) continue;
      this.add(
        'instance-placement',
        instance.instanceId,
        `instance ${instance.instanceId} is running on ${instance.hostId} according to the inventory, but host ${instance.hostId} has no record of it: ` +
          `restore it from a snapshot (\`rehome snapshot list --account ${instance.account} --instance ${instance.instanceId}\`)`,
      );
    }
  }

  // ---- volumes the inventory knows -------------------------------------------------------------

  private checkVolumes(): void {
    const initsLive = this.fleetInitKeys.some((key) => this.live(key));
    for (const v of this.inventory.listVolumes()) {
      if (!isValidId(v.hostId) || !isValidId(v.volumeId)) continue; // reported by checkConsistency or unreadable
      const instance = this.inventory.getInstance(v.instanceId);
      const excused = this.moving(v.instanceId) || (instance?.state === 'pending' && initsLive);
      const store = new HostStore(this.dataDir, v.hostId);
      const image = store.imagePath(v.volumeId);
      const size = fs.statSync(image, { throwIfNoEntry: false })?.size;
      if (size === undefined) {
        if (excused) continue;
        const account = instance?.account ?? '<account>';
        this.add(
          'missing-image',
          v.volumeId,
          `volume ${v.volumeId} of instance ${v.instanceId} should be at ${this.rel(image)} but is not there: ` +
            `restore the instance from a snapshot (\`rehome snapshot list --account ${account} --instance ${v.instanceId}\`)`,
        );
        continue;
      }
      if (size !== v.sizeBytes) {
        this.add(
          'image-size',
          v.volumeId,
          `${this.rel(image)} is ${formatExactBytes(size)} but the inventory says volume ${v.volumeId} is ${formatExactBytes(v.sizeBytes)}: ` +
            `the image was truncated or overwritten; restore it from a snapshot`,
        );
      }
      const sidecar = this.readSidecar(store, v.volumeId);
      if (sidecar === null) continue;
      const mismatch = !sidecar
        ? 'is missing (an interrupted create or delete)'
        : [
            sidecar.instanceId !== v.instanceId &&
              `names instance ${sidecar.instanceId}, not ${v.instanceId}`,
            sidecar.sizeBytes !== v.sizeBytes && `says ${sidecar.sizeBytes} bytes, not ${v.sizeBytes}`,
            sidecar.blockSize !== v.blockSize && `says block size ${sidecar.blockSize}, not ${v.blockSize}`,
            sidecar.userData !== v.userData && `says userData ${sidecar.userData}, not ${v.userData}`,
          ]
            .filter(Boolean)
            .join(', ');
      if (mismatch && !excused) {
        this.add(
          'sidecar-mismatch',
          v.volumeId,
          `the sidecar ${this.rel(store.metaPath(v.volumeId))} of volume ${v.volumeId} ${mismatch}: ` +
            `the host does not see the volume the inventory records; rewrite the sidecar from the inventory or restore the volume`,
        );
      }
    }
  }

  // ---- everything on a host's disk -------------------------------------------------------------

  private checkHostDisk(hostId: string): void {
    const store = new HostStore(this.dataDir, hostId);
    const volumesDir = path.dirname(store.imagePath('x'));
    const onDisk = new Map<string, DiskVolume>();
    for (const name of listDir(volumesDir)) {
      if (this.checkTemp(volumesDir, name)) continue;
      const m = VOLUME_FILE.exec(name);
      if (!m || !isValidId(m[1])) continue;
      const entry = onDisk.get(m[1]) ?? { hostId, volumeId: m[1], files: new Set() };
      entry.files.add(m[2] as 'img' | 'json' | 'map');
      onDisk.set(m[1], entry);
    }
    for (const entry of onDisk.values()) this.checkDiskVolume(store, entry);

    const instancesDir = path.join(this.hostRoot(hostId), 'instances');
    for (const name of listDir(instancesDir)) this.checkTemp(instancesDir, name);

    const captures = capturesDir(this.hostRoot(hostId));
    for (const name of listDir(captures)) {
      const m = SPILL_NAME.exec(name);
      if (!m || processAlive(Number(m[3]))) continue;
      const file = this.rel(path.join(captures, name));
      this.add(
        'orphan-spill',
        file,
        `${file} is the spill file of capture ${m[2]} of volume ${m[1]}, whose process (pid ${m[3]}) is gone: delete it (the host agent also does when it restarts)`,
      );
    }

    const restores = path.join(this.hostRoot(hostId), 'restores');
    for (const restoreId of listDir(restores)) {
      if (this.live(restoreId)) continue;
      const dir = this.rel(path.join(restores, restoreId));
      this.add(
        'orphan-restore',
        dir,
        `${dir} holds the partial images of restore ${restoreId}, which is not running: delete the directory`,
      );
    }
  }

  private checkDiskVolume(store: HostStore, entry: DiskVolume): void {
    const { hostId, volumeId, files } = entry;
    const inInventory = this.inventory.getVolume(volumeId);
    const sidecar = files.has('json') ? this.readSidecar(store, volumeId) : undefined;
    if (sidecar === null) return;
    const owner =
      sidecar?.instanceId ??
      inInventory?.instanceId ??
      this.records.get(hostId)?.find((r) => r.volumes.some((v) => v.volumeId === volumeId))?.instanceId;
    const owned = owner !== undefined && this.ownedOnHost(hostId, owner);
    const replica = sidecar?.replica === true || files.has('map');
    const listed = [...files].map((ext) => `${volumeId}.${ext}`).join(', ');
    const dir = this.rel(path.dirname(store.imagePath(volumeId)));

    if (inInventory?.hostId === hostId) {
      // The inventory's own image: a replica here is only right while a migration to this host runs.
      if (!replica || owned) return;
      const what = sidecar?.replica
        ? `is still a replica being synchronised`
        : `has a sync map left next to it (an interrupted finalize)`;
      this.add(
        'orphan-replica',
        `${dir}/${volumeId}`,
        `volume ${volumeId} on ${hostId} ${what}, but no running migration owns it: ` +
          (sidecar?.replica
            ? 'blocks may be missing; restore the volume from a snapshot'
            : `delete ${dir}/${volumeId}.map (opening the volume also does)`),
      );
      return;
    }
    if (owned) return;
    const where = inInventory
      ? `the inventory has volume ${volumeId} on ${inInventory.hostId}`
      : `the inventory has no volume ${volumeId}`;
    this.add(
      replica ? 'orphan-replica' : 'orphan-image',
      `${dir}/${volumeId}`,
      `${dir} holds ${listed}${owner ? ` (instance ${owner})` : ''} but ${where}, and no running migration, restore or import owns it: ` +
        `delete ${listed} from ${dir} once you are sure nothing else needs it`,
    );
  }

  /** True if `name` is a temp file; reported when the process that wrote it is gone. */
  private checkTemp(dir: string, name: string): boolean {
    const temp = parseTempName(name);
    if (!temp) return false;
    if (!processAlive(temp.pid)) {
      const file = this.rel(path.join(dir, name));
      this.add(
        'orphan-temp',
        file,
        `${file} is a temp file of an interrupted write of ${temp.finalName} by a process (pid ${temp.pid}) that is gone: delete it`,
      );
    }
    return true;
  }

  // ---- ownership -------------------------------------------------------------------------------

  /** Whether a workflow is running; without a lookup, one that holds a reservation counts as running. */
  private live(workflowId: string): boolean {
    return this.running ? this.running.has(workflowId) : this.reservations.some((r) => r.key === workflowId);
  }

  /** A running migration, restore or import is putting this instance (and its volumes) on this host. */
  private ownedOnHost(hostId: string, instanceId: string): boolean {
    if (
      this.reservations.some((r) => r.hostId === hostId && r.instanceId === instanceId && this.live(r.key))
    ) {
      return true;
    }
    const record = this.records.get(hostId)?.find((r) => r.instanceId === instanceId);
    return (
      (record?.migration !== undefined && this.live(record.migration.migrationId)) ||
      (record?.restored !== undefined && this.live(record.restored.restoreId))
    );
  }

  /** A running workflow is moving this instance, so its inventory host may lack it for a while. */
  private moving(instanceId: string): boolean {
    return this.reservations.some((r) => r.instanceId === instanceId && this.live(r.key));
  }

  // ---- reading ---------------------------------------------------------------------------------

  private hostRoot(hostId: string): string {
    return new HostStore(this.dataDir, hostId).root;
  }

  private recordPath(hostId: string, instanceId: string): string {
    return path.join(this.hostRoot(hostId), 'instances', `${instanceId}.json`);
  }

  private readRecords(hostId: string): HostInstanceRecord[] {
    const dir = path.join(this.hostRoot(hostId), 'instances');
    const records: HostInstanceRecord[] = [];
    for (const name of listDir(dir)) {
      if (!name.endsWith('.json') || !isValidId(name.slice(0, -5))) continue;
      try {
        records.push(JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')) as HostInstanceRecord);
      } catch (err) {
        const file = this.rel(path.join(dir, name));
        this.add(
          'orphan-instance-record',
          file,
          `${file} cannot be read (${(err as Error).message}): the host agent will not start with it; delete or repair it`,
        );
      }
    }
    return records;
  }

  /** The sidecar, undefined when there is none, null when it cannot be read (reported). */
  private readSidecar(store: HostStore, volumeId: string): VolumeSidecar | undefined | null {
    const key = `${store.hostId}/${volumeId}`;
    if (!this.sidecars.has(key)) this.sidecars.set(key, this.loadSidecar(store, volumeId));
    return this.sidecars.get(key);
  }

  private loadSidecar(store: HostStore, volumeId: string): VolumeSidecar | undefined | null {
    try {
      return store.readSidecar(volumeId);
    } catch (err) {
      const file = this.rel(store.metaPath(volumeId));
      this.add(
        'sidecar-mismatch',
        file,
        `${file} cannot be read (${(err as Error).message}): rewrite it from the inventory or restore the volume`,
      );
      return null;
    }
  }

  private rel(file: string): string {
    return path.relative(this.dataDir, file);
  }

  private add(kind: FleetViolationKind, subject: string, message: string): void {
    this.violations.push({ kind, subject, message });
  }
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir).sort();
  } catch {
    return [];
  }
}

function sameResources(a: Resources, b: Resources): boolean {
  return a.vcpu === b.vcpu && a.memoryMiB === b.memoryMiB && a.diskBytes === b.diskBytes;
}
