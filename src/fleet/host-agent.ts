import * as fs from 'fs';
import { open as openFile, rename } from 'fs/promises';
import * as path from 'path';
import { ApplicationFailure } from '@temporalio/common';
import type { InstanceLaunch, SwitchResult, WorkloadConfig } from '../contracts';
import {
  assertId,
  dataIntegrity,
  formatBytes,
  formatDuration,
  formatList,
  invalidInput,
  invalidState,
  notFound,
} from '../contracts';
import { isNoEnt, removeTemps, writeFileAtomicSync } from './atomic-file';
import type { BlockDevice } from './block-device';
import type { BlockSource } from './block-source';
import { checkVolumeMeta, HostStore, type VolumeMeta } from './host-store';
import { ReplicaVolume } from './replica';
import { rangeBytes, writeFully } from './volume';
import { VolumeCapture, capturesDir, removeStaleSpills, type VolumeCaptureOptions } from './volume-capture';
import { Workload, type PauseResult } from './workload';
import { lastLoggedSeq, nowMs } from './workload-log';

export type HostInstanceState = 'prepared' | 'running' | 'paused' | 'stopped';

export type LaunchVolume = InstanceLaunch['volumes'][number];

export interface InstanceMigration {
  migrationId: string;
  sourceHostId: string;
  targetHostId: string;
  role: 'target' | 'source';
  /** Latest background copy limit (bytes/s, 0 = unlimited) set for this migration; target only. */
  bandwidthBytesPerSec?: number;
}

/** What a host keeps on its own disk about an instance it runs, receives or gave away. */
export interface InstanceRecord {
  instanceId: string;
  account: string;
  volumes: LaunchVolume[];
  workload: WorkloadConfig;
  state: HostInstanceState;
  migration?: InstanceMigration;
  /** Last workload seq known when the record was written (the log may be ahead while running). */
  lastSeq: number;
  /** Source side: what the pause for a switch returned, so a retried switch gets the same answer. */
  pause?: PauseResult;
  /** Target side: the recorded switch. */
  switch?: SwitchResult;
  /** Set when the instance was started here from snapshots, so a retried start gets the same answer. */
  restored?: { restoreId: string; resumedAtSeq: number };
  /** Set when a restarting agent found the instance placed on another host and stopped this copy. */
  fenced?: { placedOn: string; atMs: number };
}

/** Where a restore reads a volume from: verified batches of consecutive chunks. */
export interface RestoreSource {
  chunkSize: number;
  chunkCount: number;
  /** The chunks from `fromChunk` to the end, in order, each batch verified before it is yielded. */
  read(fromChunk: number): AsyncIterable<{ firstChunk: number; data: Buffer }>;
}

export interface RestoreVolumeOptions {
  /** A previous attempt wrote every chunk before this one (its heartbeated cursor). */
  fromChunk?: number;
  /** After each batch: every chunk before `nextChunk` is in the image being written. */
  onProgress?: (nextChunk: number) => void | Promise<void>;
}

/** How an agent reaches other hosts: their data (always) and their agent (when in this process). */
export interface HostPeers {
  blockSource(hostId: string): BlockSource;
  localAgent(hostId: string): HostAgent | undefined;
}

export interface HostAgentOptions {
  /** Called when a running workload's write fails (it keeps retrying). Default: a throttled warning. */
  onWorkloadError?: (instanceId: string, err: unknown) => void;
  /** Period of each Workload's rate loop (the Workload's default, 5 ms, when unset). */
  workloadTickMs?: number;
  /**
   * After a switch, how long a migration's source may stay unreadable before its data counts as lost
   * and the sync fails naming the blocks at risk (default SOURCE_LOST_AFTER_MS).
   */
  sourceLostAfterMs?: number;
  /**
   * The host the fleet places an instance on when that is not `hostId` and nothing is moving it to
   * `hostId`; undefined otherwise (or when the fleet does not know). A restarting agent does not
   * resume an instance placed elsewhere: it was restored or moved while this host was away, and a
   * second running copy would write over the instance's history.
   */
  placedElsewhere?: (instanceId: string, hostId: string) => string | undefined;
}

/** A source that cannot be read for this long is not coming back soon: its data is at risk. */
export const SOURCE_LOST_AFTER_MS = 20_000;

const SOURCE_UNREACHABLE = 'SourceUnreachable';

/** The agent of `peer` is not in this process: retryable, another worker may serve it. */
export function hostUnreachable(hostId: string, from: string): ApplicationFailure {
  return ApplicationFailure.create({
    type: 'HostUnreachable',
    message: `host agent ${hostId} is not reachable from ${from}: start a worker serving ${hostId} in the same process as ${from}`,
    nonRetryable: false,
  });
}

/** A read of a source host's volume failed: retryable, the host may come back. */
function sourceUnreachable(hostId: string, volumeId: string, why: string): ApplicationFailure {
  return ApplicationFailure.create({
    type: SOURCE_UNREACHABLE,
    message: `volume ${volumeId} on source host ${hostId} cannot be read: ${why}`,
    nonRetryable: false,
  });
}

function isSourceUnreachable(err: unknown): err is ApplicationFailure {
  return err instanceof ApplicationFailure && err.type === SOURCE_UNREACHABLE;
}

/**
 * The target's link to its source. Every host's data lives under one data directory, so a target
 * could go on reading a source image through a file it opened before the source host was lost,
 * where a real link would fail: each call first checks that the image is still on the source's
 * disk. Any failure on the source side is reported as SourceUnreachable.
 */
function watchedSource(source: BlockSource, sourceStore: HostStore): BlockSource {
  const guard = async <T>(volumeId: string, read: () => Promise<T>): Promise<T> => {
    if (!fs.existsSync(sourceStore.imagePath(volumeId))) {
      throw sourceUnreachable(source.hostId, volumeId, `${sourceStore.imagePath(volumeId)} is gone`);
    }
    try {
      return await read();
    } catch (err) {
      throw sourceUnreachable(source.hostId, volumeId, err instanceof Error ? err.message : String(err));
    }
  };
  const watched: BlockSource = {
    hostId: source.hostId,
    readBlocks: (volumeId, first, count) => guard(volumeId, () => source.readBlocks(volumeId, first, count)),
    hashBlocks: (volumeId, first, count) => guard(volumeId, () => source.hashBlocks(volumeId, first, count)),
    recycle: source.recycle && ((data) => source.recycle!(data)),
    close: () => source.close(),
  };
  if (source.copyBlocksInto) {
    watched.copyBlocksInto = (volumeId, first, count, into) =>
      guard(volumeId, () => source.copyBlocksInto!(volumeId, first, count, into));
  }
  return watched;
}

function throttledWarning(hostId: string): (instanceId: string, err: unknown) => void {
  const last = new Map<string, number>();
  return (instanceId, err) => {
    const now = Date.now();
    if (now - (last.get(instanceId) ?? 0) < 5000) return;
    last.set(instanceId, now);
    console.warn(
      `[${hostId}] workload of ${instanceId}: ${err instanceof Error ? err.message : String(err)}`,
    );
  };
}

/** Leaves the directory if anything is still in it (e.g. another volume of the restore being written). */
function removeDirIfEmpty(dir: string): void {
  try {
    fs.rmdirSync(dir);
  } catch {
    // not empty, or gone already
  }
}

/** Serialises lifecycle operations per instance, so a retried activity never interleaves with its first attempt. */
class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    this.tails.set(key, next);
    try {
      return await next;
    } finally {
      if (this.tails.get(key) === next) this.tails.delete(key);
    }
  }
}

/**
 * One simulated host: its store, the one open device per volume (shared by the workload, the sync
 * and export), and the instances it runs, whose state lives in `<host>/instances/<id>.json`.
 */
export class HostAgent {
  readonly hostId: string;
  readonly store: HostStore;
  private readonly instancesDir: string;
  private readonly records = new Map<string, InstanceRecord>();
  private readonly workloads = new Map<string, Workload>();
  private readonly devices = new Map<string, Promise<BlockDevice>>();
  private readonly sources = new Map<string, BlockSource>();
  /** The open point-in-time capture of a volume, if any: its device wraps the volume's. */
  private readonly captures = new Map<string, VolumeCapture>();
  /** Per-migration copy limit read by a running copy on every chunk. */
  private readonly bandwidth = new Map<string, number>();
  /** Since when (epoch ms) a migration's volume has failed to reach its source, until a step succeeds. */
  private readonly sourceDownSince = new Map<string, number>();
  private readonly lock = new KeyedLock();
  private readonly onWorkloadError: (instanceId: string, err: unknown) => void;
  private started = false;
  private closed = false;

  constructor(
    readonly dataDir: string,
    hostId: string,
    private readonly peers: HostPeers,
    private readonly options: HostAgentOptions = {},
  ) {
    this.hostId = assertId('hostId', hostId);
    this.store = new HostStore(dataDir, hostId);
    this.instancesDir = path.join(this.store.root, 'instances');
    this.onWorkloadError = options.onWorkloadError ?? throttledWarning(this.hostId);
  }

  /** Loads the instance records and resumes every instance that was running (how a killed agent comes back). */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await removeTemps(this.instancesDir, (name) => name.endsWith('.json'));
    await removeStaleSpills(capturesDir(this.store.root));
    for (const record of this.loadRecords()) {
      this.records.set(record.instanceId, record);
      if (record.migration?.bandwidthBytesPerSec !== undefined) {
        this.bandwidth.set(record.migration.migrationId, record.migration.bandwidthBytesPerSec);
      }
    }
    for (const record of this.records.values()) {
      if (record.state !== 'running' || this.fenceIfPlacedElsewhere(record)) continue;
      try {
        await this.startWorkload(record);
      } catch (err) {
        this.onWorkloadError(record.instanceId, err);
      }
    }
  }

  /**
   * Stops this copy for good when the fleet now places the instance elsewhere, and says whether it
   * did. The record and images stay for the operator to inspect; fleet check lists them as orphans
   * until removed.
   */
  private fenceIfPlacedElsewhere(record: InstanceRecord): boolean {
    const placedOn = this.options.placedElsewhere?.(record.instanceId, this.hostId);
    if (placedOn === undefined) return false;
    this.update(record.instanceId, (r) => ({
      ...r,
      state: 'stopped',
      fenced: { placedOn, atMs: Date.now() },
    }));
    console.warn(
      `rehome: host ${this.hostId} does not resume instance ${record.instanceId}: the inventory places it on ${placedOn} ` +
        `(restored or moved while ${this.hostId} was away); this copy is kept, stopped, in ${this.recordPath(record.instanceId)} for inspection`,
    );
    return true;
  }

  /** Stops every workload (records stay 'running' so a restart resumes them) and closes every device. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const [instanceId, workload] of this.workloads) {
      const { lastSeq } = await workload.stop();
      const record = this.records.get(instanceId);
      if (record?.state === 'running') this.update(instanceId, (r) => ({ ...r, lastSeq }));
    }
    this.workloads.clear();
    for (const volumeId of [...this.devices.keys()]) await this.closeDevice(volumeId);
  }

  // ---- records ---------------------------------------------------------------------------------

  instance(instanceId: string): InstanceRecord | undefined {
    const record = this.records.get(instanceId);
    return record && structuredClone(record);
  }

  /** The workload of an instance running (or paused) here, if any. */
  workload(instanceId: string): Workload | undefined {
    return this.workloads.get(instanceId);
  }

  recordPath(instanceId: string): string {
    return path.join(this.instancesDir, `${assertId('instanceId', instanceId)}.json`);
  }

  private loadRecords(): InstanceRecord[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.instancesDir);
    } catch (err) {
      if (isNoEnt(err)) return [];
      throw err;
    }
    return names
      .filter((n) => n.endsWith('.json'))
      .map((n) => JSON.parse(fs.readFileSync(path.join(this.instancesDir, n), 'utf8')) as InstanceRecord);
  }

  /** Atomic (temp + rename) and synchronous, so concurrent activities never interleave a read-modify-write. */
  private save(record: InstanceRecord): InstanceRecord {
    const file = this.recordPath(record.instanceId);
    fs.mkdirSync(this.instancesDir, { recursive: true });
    writeFileAtomicSync(file, JSON.stringify(record, null, 2) + '\n');
    this.records.set(record.instanceId, record);
    return record;
  }

  /** Read-modify-write of the current record, in one synchronous step. */
  private update(instanceId: string, change: (record: InstanceRecord) => InstanceRecord): InstanceRecord {
    return this.save(change(this.require(instanceId)));
  }

  private forget(instanceId: string): void {
    fs.rmSync(this.recordPath(instanceId), { force: true });
    this.records.delete(instanceId);
  }

  private require(instanceId: string): InstanceRecord {
    const record = this.records.get(assertId('instanceId', instanceId));
    if (!record) throw notFound(`instance ${instanceId} is not on host ${this.hostId}`);
    return record;
  }

  /** The record of the instance owning a volume on this host. */
  ownerOf(volumeId: string): InstanceRecord | undefined {
    for (const record of this.records.values()) {
      if (record.volumes.some((v) => v.volumeId === volumeId)) return record;
    }
    return undefined;
  }

  // ---- devices ---------------------------------------------------------------------------------

  /**
   * The one open device of a volume on this host: a replica (reading through to its source) while
   * it is being synchronised, the plain volume otherwise.
   */
  device(volumeId: string): Promise<BlockDevice> {
    assertId('volumeId', volumeId);
    // While a capture is open, writes go through it, so it keeps what they overwrite.
    const capture = this.captures.get(volumeId);
    if (capture) return Promise.resolve(capture.device);
    return this.openedDevice(volumeId);
  }

  /** The device itself, never a capture's wrapper. */
  private openedDevice(volumeId: string): Promise<BlockDevice> {
    let device = this.devices.get(volumeId);
    if (!device) {
      device = this.openDevice(volumeId);
      this.devices.set(volumeId, device);
      device.catch(() => {
        if (this.devices.get(volumeId) === device) this.devices.delete(volumeId);
      });
    }
    return device;
  }

  /** The replica device of a volume being synchronised here. */
  async replica(volumeId: string): Promise<ReplicaVolume> {
    const device = await this.openedDevice(assertId('volumeId', volumeId));
    if (!(device instanceof ReplicaVolume)) {
      throw invalidState(`volume ${volumeId} on host ${this.hostId} is not a replica being synchronised`);
    }
    return device;
  }

  private async openDevice(volumeId: string): Promise<BlockDevice> {
    if (this.closed) throw invalidState(`host agent ${this.hostId} is closed`);
    const sidecar = this.store.readSidecar(volumeId);
    if (!sidecar) throw notFound(`volume ${volumeId} does not exist on host ${this.hostId}`);
    if (!sidecar.replica) return this.store.openVolume(volumeId);
    const owner = this.ownerOf(volumeId);
    if (!owner?.migration || owner.migration.role !== 'target') {
      throw invalidState(
        `volume ${volumeId} on host ${this.hostId} is a replica but no migration to this host names its source`,
      );
    }
    const sourceHostId = owner.migration.sourceHostId;
    const source = watchedSource(
      this.peers.blockSource(sourceHostId),
      new HostStore(this.dataDir, sourceHostId),
    );
    try {
      const replica = await ReplicaVolume.open(this.store, volumeId, source);
      this.sources.set(volumeId, source);
      return replica;
    } catch (err) {
      await source.close();
      throw err;
    }
  }

  private async closeDevice(volumeId: string): Promise<void> {
    await this.closeCapture(volumeId);
    const device = this.devices.get(volumeId);
    if (device) {
      this.devices.delete(volumeId);
      const opened = await device.catch(() => undefined);
      await opened?.close();
    }
    await this.closeSource(volumeId);
  }

  /** The replica's link to its source; a finalized replica no longer reads through it. */
  private async closeSource(volumeId: string): Promise<void> {
    const source = this.sources.get(volumeId);
    this.sources.delete(volumeId);
    await source?.close();
  }

  // ---- workloads -------------------------------------------------------------------------------

  private workloadFor(record: InstanceRecord): Workload {
    let workload = this.workloads.get(record.instanceId);
    if (!workload || workload.state === 'stopped') {
      workload = new Workload(
        {
          instanceId: record.instanceId,
          hostId: this.hostId,
          dataDir: this.dataDir,
          config: record.workload,
          volumes: record.volumes,
          device: (volumeId) => this.device(volumeId),
          tickMs: this.options.workloadTickMs,
          onError: (err) => this.onWorkloadError(record.instanceId, err),
        },
        record.lastSeq,
      );
      this.workloads.set(record.instanceId, workload);
    }
    return workload;
  }

  /** Next seq for an instance starting here: after both the record and the shared log. */
  private nextSeq(record: InstanceRecord, atLeastAfter = 0): number {
    return Math.max(record.lastSeq, atLeastAfter, lastLoggedSeq(this.dataDir, record.instanceId)) + 1;
  }

  private async startWorkload(record: InstanceRecord, afterSeq = 0) {
    return this.workloadFor(record).resume(this.nextSeq(record, afterSeq));
  }

  private async stopWorkload(instanceId: string): Promise<PauseResult | undefined> {
    const workload = this.workloads.get(instanceId);
    if (!workload) return undefined;
    this.workloads.delete(instanceId);
    return workload.stop();
  }

  // ---- lifecycle -------------------------------------------------------------------------------

  /** Creates the instance's volumes (pattern fill; user-data volumes come by import) and runs it. Idempotent. */
  async launch(launch: InstanceLaunch): Promise<InstanceRecord> {
    return this.lock.run(launch.instanceId, async () => {
      const existing = this.records.get(launch.instanceId);
      if (existing) {
        if (existing.migration || existing.state === 'prepared' || existing.state === 'stopped') {
          throw invalidState(
            `instance ${launch.instanceId} is already on host ${this.hostId} (state ${existing.state}${existing.migration ? `, migration ${existing.migration.migrationId}` : ''}): it cannot be launched again`,
          );
        }
        if (existing.state === 'running' && this.workloads.get(launch.instanceId)?.state !== 'running') {
          await this.startWorkload(existing);
        }
        return structuredClone(existing);
      }
      for (const volume of launch.volumes) {
        if (volume.userData) continue;
        await this.store.createVolume(this.meta(launch.instanceId, volume), 'pattern');
      }
      const record = this.save({
        instanceId: launch.instanceId,
        account: launch.account,
        volumes: launch.volumes.filter((v) => !v.userData),
        workload: launch.workload,
        state: 'running',
        lastSeq: 0,
      });
      await this.startWorkload(record);
      return structuredClone(record);
    });
  }

  private meta(instanceId: string, volume: LaunchVolume): VolumeMeta {
    return {
      volumeId: volume.volumeId,
      instanceId,
      sizeBytes: volume.sizeBytes,
      blockSize: volume.blockSize,
      userData: volume.userData,
    };
  }

  /** Target side: the record first (so a rollback finds what to delete), then empty replicas. */
  async prepareTarget(migrationId: string, sourceHostId: string, launch: InstanceLaunch): Promise<void> {
    await this.lock.run(launch.instanceId, async () => {
      const existing = this.records.get(launch.instanceId);
      if (
        existing &&
        !(existing.migration?.role === 'target' && existing.migration.migrationId === migrationId)
      ) {
        throw invalidState(
          `instance ${launch.instanceId} is already on host ${this.hostId} (state ${existing.state}): it cannot be the target of migration ${migrationId}`,
        );
      }
      if (existing?.switch) return;
      const record =
        existing ??
        this.save({
          instanceId: launch.instanceId,
          account: launch.account,
          volumes: launch.volumes,
          workload: launch.workload,
          state: 'prepared',
          migration: { migrationId, sourceHostId, targetHostId: this.hostId, role: 'target' },
          lastSeq: 0,
        });
      for (const volume of record.volumes) {
        if (ReplicaVolume.isReplica(this.store, volume.volumeId)) continue;
        await ReplicaVolume.create(this.store, this.meta(record.instanceId, volume));
      }
    });
  }

  /**
   * Source side of a switch: stop writing here and remember why, so a restarted agent does not
   * resume the instance. Pausing again for the same migration returns the first answer.
   */
  async pauseForSwitch(instanceId: string, migrationId: string, targetHostId: string): Promise<PauseResult> {
    return this.lock.run(instanceId, async () => {
      const record = this.require(instanceId);
      const m = record.migration;
      if (
        record.state === 'paused' &&
        m?.role === 'source' &&
        m.migrationId === migrationId &&
        record.pause
      ) {
        return record.pause;
      }
      if (record.state !== 'running' || m) {
        throw invalidState(
          `instance ${instanceId} on host ${this.hostId} is ${record.state}${m ? ` in migration ${m.migrationId}` : ''}: only a running instance not already migrating can be switched away`,
        );
      }
      const pause = (await this.workloads.get(instanceId)?.pause()) ?? {
        lastSeq: this.nextSeq(record) - 1,
        lastWriteAtMs: null,
        pausedAtMs: nowMs(),
      };
      this.update(instanceId, (r) => ({
        ...r,
        state: 'paused',
        lastSeq: pause.lastSeq,
        pause,
        migration: { migrationId, sourceHostId: this.hostId, targetHostId, role: 'source' },
      }));
      return pause;
    });
  }

  /**
   * Target side: pause on the source, start here from the next seq. Replicas are opened before the
   * pause, so the downtime is one pause, one state write on the source and one first write here.
   */
  async switchIn(migrationId: string, instanceId: string, sourceHostId: string): Promise<SwitchResult> {
    return this.lock.run(instanceId, async () => {
      const record = this.require(instanceId);
      const m = record.migration;
      if (record.switch && (!m || m.migrationId === migrationId)) {
        if (record.state === 'running' && this.workloads.get(instanceId)?.state !== 'running') {
          await this.startWorkload(record);
        }
        return record.switch;
      }
      if (m?.role !== 'target' || m.migrationId !== migrationId) {
        throw invalidState(
          `instance ${instanceId} on host ${this.hostId} is not the prepared target of migration ${migrationId}`,
        );
      }
      if (m.sourceHostId !== sourceHostId) {
        throw invalidState(
          `migration ${migrationId} to host ${this.hostId} was prepared from host ${m.sourceHostId}, not ${sourceHostId}`,
        );
      }
      const source = this.peers.localAgent(sourceHostId);
      if (!source) throw hostUnreachable(sourceHostId, this.hostId);
      for (const volume of record.volumes) await this.device(volume.volumeId);

      const paused = await source.pauseForSwitch(instanceId, migrationId, this.hostId);
      let resumed;
      try {
        resumed = await this.startWorkload(record, paused.lastSeq);
      } catch (err) {
        await this.stopWorkload(instanceId);
        await source.resumeInstance(instanceId);
        throw err;
      }
      const pausedAtMs = paused.lastWriteAtMs ?? paused.pausedAtMs;
      const resumedAtMs = resumed.firstWriteAtMs ?? resumed.resumedAtMs;
      const result: SwitchResult = {
        lastSourceSeq: paused.lastSeq,
        pausedAtMs,
        resumedAtMs,
        downtimeMs: resumedAtMs - pausedAtMs,
      };
      this.update(instanceId, (r) => ({ ...r, state: 'running', lastSeq: paused.lastSeq, switch: result }));
      return result;
    });
  }

  /** Runs the instance here again (compensation of a failed switch). Idempotent. */
  async resumeInstance(instanceId: string): Promise<void> {
    await this.lock.run(instanceId, async () => {
      const record = this.require(instanceId);
      if (record.state === 'running') {
        if (this.workloads.get(instanceId)?.state !== 'running') await this.startWorkload(record);
        return;
      }
      if (record.state !== 'paused') {
        throw invalidState(
          `instance ${instanceId} on host ${this.hostId} is ${record.state}: it cannot be resumed here`,
        );
      }
      const m = record.migration;
      const target = m && this.peers.localAgent(m.targetHostId)?.instance(instanceId);
      if (m && target?.switch && target.migration?.migrationId === m.migrationId) {
        throw invalidState(
          `instance ${instanceId} already switched to host ${m.targetHostId} in migration ${m.migrationId}: it runs there and will not be resumed on ${this.hostId}`,
        );
      }
      await this.startWorkload(record);
      this.update(instanceId, (r) => ({ ...r, state: 'running', migration: undefined, pause: undefined }));
    });
  }

  /** Target side: the replicas hold every block; make them plain volumes and drop the migration. */
  async finalizeTarget(migrationId: string, instanceId: string): Promise<void> {
    await this.lock.run(instanceId, async () => {
      const record = this.require(instanceId);
      const m = record.migration;
      if (!m && record.switch) return; // finalized already
      if (m?.role !== 'target' || m.migrationId !== migrationId) {
        throw invalidState(
          `instance ${instanceId} on host ${this.hostId} is not the target of migration ${migrationId}`,
        );
      }
      if (!record.switch) {
        throw invalidState(
          `migration ${migrationId} has not switched ${instanceId} to host ${this.hostId}: nothing to finalize`,
        );
      }
      for (const volume of record.volumes) {
        if (!ReplicaVolume.isReplica(this.store, volume.volumeId)) continue;
        // The finalized replica stays the open device: from now on it reads and writes its image only.
        const replica = await this.replica(volume.volumeId);
        await replica.finalize();
        await this.closeSource(volume.volumeId);
      }
      this.bandwidth.delete(migrationId);
      this.update(instanceId, (r) => ({ ...r, migration: undefined }));
    });
  }

  /** Target side rollback before the switch. Idempotent; refused once the instance runs here. */
  async discardTarget(migrationId: string, instanceId: string): Promise<void> {
    await this.lock.run(assertId('instanceId', instanceId), async () => {
      const record = this.records.get(instanceId);
      if (!record) return;
      const m = record.migration;
      if (
        record.switch ||
        // 'stopped' without a switch is a discard interrupted by a crash: finish it.
        (m?.role === 'target' &&
          m.migrationId === migrationId &&
          (record.state === 'running' || record.state === 'paused'))
      ) {
        throw invalidState(
          `instance ${instanceId} already switched to host ${this.hostId}: it is authoritative here and cannot be discarded; let the sync complete`,
        );
      }
      if (m?.role !== 'target' || m.migrationId !== migrationId) {
        throw invalidState(
          `instance ${instanceId} on host ${this.hostId} is not the prepared target of migration ${migrationId}: nothing discarded`,
        );
      }
      await this.deleteInstance(record);
    });
  }

  /** Source side after the sync: stop and delete everything of the instance here. Idempotent. */
  async releaseSource(migrationId: string, instanceId: string): Promise<void> {
    await this.lock.run(assertId('instanceId', instanceId), async () => {
      const record = this.records.get(instanceId);
      if (!record) return;
      if (record.state === 'running' || record.state === 'prepared') {
        throw invalidState(
          `instance ${instanceId} still runs on host ${this.hostId} (state ${record.state}): release the source only after the switch`,
        );
      }
      const m = record.migration;
      if (record.state === 'paused' && (m?.role !== 'source' || m.migrationId !== migrationId)) {
        throw invalidState(
          `instance ${instanceId} on host ${this.hostId} was paused for migration ${m?.migrationId ?? '(none)'}, not ${migrationId}: not released`,
        );
      }
      await this.deleteInstance(record);
    });
  }

  /** Stopped first (so a restart never resumes it), then volumes, then the record. */
  private async deleteInstance(record: InstanceRecord): Promise<void> {
    await this.stopWorkload(record.instanceId);
    if (record.state !== 'stopped')
      record = this.update(record.instanceId, (r) => ({ ...r, state: 'stopped' }));
    for (const volume of record.volumes) {
      await this.closeDevice(volume.volumeId);
      await this.store.deleteVolume(volume.volumeId);
    }
    this.forget(record.instanceId);
  }

  // ---- sync ------------------------------------------------------------------------------------

  /** The migration this host receives an instance by, for a volume being synchronised here. */
  targetMigration(
    volumeId: string,
    migrationId: string,
  ): { record: InstanceRecord; migration?: InstanceMigration } {
    const record = this.ownerOf(assertId('volumeId', volumeId));
    if (!record) throw notFound(`volume ${volumeId} does not belong to any instance on host ${this.hostId}`);
    const m = record.migration;
    if (m && (m.role !== 'target' || m.migrationId !== migrationId)) {
      throw invalidState(
        `volume ${volumeId} on host ${this.hostId} is not being received by migration ${migrationId}`,
      );
    }
    return { record, migration: m };
  }

  /**
   * Runs a sync or verify step of a volume received here. While its source cannot be read the step
   * fails retryably; once that has lasted sourceLostAfterMs, the source counts as lost and the step
   * fails for good (DataIntegrity) naming the volume and the blocks that exist only there.
   */
  async watchSource<T>(
    migrationId: string,
    volumeId: string,
    step: 'sync' | 'verify',
    work: () => Promise<T>,
  ): Promise<T> {
    const key = `${migrationId}/${volumeId}`;
    try {
      const result = await work();
      this.sourceDownSince.delete(key);
      return result;
    } catch (err) {
      if (!isSourceUnreachable(err)) throw err;
      const now = Date.now();
      const since = this.sourceDownSince.get(key) ?? now;
      this.sourceDownSince.set(key, since);
      const limit = this.options.sourceLostAfterMs ?? SOURCE_LOST_AFTER_MS;
      if (now - since < limit) throw err;
      this.sourceDownSince.delete(key);
      throw await this.sourceLost(volumeId, step, now - since, err.message);
    }
  }

  private async sourceLost(volumeId: string, step: 'sync' | 'verify', downMs: number, why: string) {
    const record = this.ownerOf(volumeId);
    const sourceHostId = record?.migration?.sourceHostId ?? '(unknown)';
    const replica = await this.replica(volumeId);
    const missing = replica.missingBlocks();
    const lost = `source host ${sourceHostId} is lost (unreadable for ${formatDuration(downMs)}: ${why})`;
    const where = `volume ${volumeId} of instance ${record?.instanceId ?? '(unknown)'} on ${this.hostId}`;
    if (missing.length > 0) {
      const bytes = missing.reduce((sum, i) => sum + rangeBytes(replica, i, 1), 0);
      return dataIntegrity(
        `${lost}: ${where} lacks ${missing.length} of ${replica.blockCount} blocks (${formatBytes(bytes)}) that were never copied from it, data at risk in blocks ${formatList(missing)}; ` +
          `the instance runs on ${this.hostId} but reading those blocks fails until ${sourceHostId}'s disk is back or the volume is restored from a snapshot`,
      );
    }
    return dataIntegrity(
      `${lost}: ${where} holds every block, but the ${step} step could not check the blocks copied from it against the source: ` +
        `they are unverified, so the replica is not finalized and the source is not released`,
    );
  }

  syncBandwidth(migrationId: string): number {
    return this.bandwidth.get(migrationId) ?? 0;
  }

  /** Applies at once to a running copy (it reads the value per chunk) and is kept for a retried slice. */
  setSyncBandwidth(migrationId: string, bytesPerSec: number): void {
    this.bandwidth.set(migrationId, bytesPerSec);
    for (const record of this.records.values()) {
      const m = record.migration;
      if (m?.role === 'target' && m.migrationId === migrationId && m.bandwidthBytesPerSec !== bytesPerSec) {
        this.save({ ...record, migration: { ...m, bandwidthBytesPerSec: bytesPerSec } });
      }
    }
  }

  /** A slice's first attempt carries the workflow's current limit; a retry keeps the latest one set. */
  initSyncBandwidth(migrationId: string, bytesPerSec: number, firstAttempt: boolean): void {
    if (firstAttempt || !this.bandwidth.has(migrationId)) this.setSyncBandwidth(migrationId, bytesPerSec);
  }

  // ---- captures --------------------------------------------------------------------------------

  /**
   * Opens a point-in-time capture of a volume of an instance here (see volume-capture.ts): the
   * workload pauses if it runs, the capture begins, the workload resumes. Nothing in that pause
   * depends on the volume's size. Reopening the same captureId replaces the open capture (a retry
   * gets a new instant); a capture with another id is refused until that one is closed.
   */
  async openCapture(
    instanceId: string,
    volumeId: string,
    captureId: string,
    options?: VolumeCaptureOptions,
  ): Promise<VolumeCapture> {
    assertId('volumeId', volumeId);
    assertId('captureId', captureId);
    return this.lock.run(assertId('instanceId', instanceId), async () => {
      const record = this.require(instanceId);
      if (!record.volumes.some((v) => v.volumeId === volumeId)) {
        throw notFound(`volume ${volumeId} is not a volume of instance ${instanceId} on host ${this.hostId}`);
      }
      if (record.state !== 'running' && record.state !== 'paused') {
        throw invalidState(
          `instance ${instanceId} on host ${this.hostId} is ${record.state}: capture its volumes where it runs`,
        );
      }
      const open = this.captures.get(volumeId);
      if (open && open.captureId !== captureId) {
        throw invalidState(
          `volume ${volumeId} on host ${this.hostId} already has capture ${open.captureId} open: close it before opening ${captureId}`,
        );
      }
      await this.closeCapture(volumeId);
      const spillDir = capturesDir(this.store.root);
      await removeStaleSpills(spillDir, { volumeId, captureId });
      const device = await this.openedDevice(volumeId);
      const capture: VolumeCapture = new VolumeCapture({
        captureId,
        hostId: this.hostId,
        device,
        spillDir,
        options,
        onClose: () => {
          if (this.captures.get(volumeId) === capture) this.captures.delete(volumeId);
        },
      });

      const workload = this.workloads.get(instanceId);
      const running = workload?.state === 'running';
      const startedAt = nowMs();
      const pause = workload
        ? await workload.pause()
        : {
            lastSeq: record.state === 'paused' ? record.lastSeq : this.nextSeq(record) - 1,
            pausedAtMs: startedAt,
          };
      this.captures.set(volumeId, capture);
      capture.begin(pause.lastSeq, pause.pausedAtMs);
      if (workload && running) {
        try {
          await workload.resume(pause.lastSeq + 1);
        } catch (err) {
          // The instance must run on: without the capture, and the caller learns it has none.
          await this.closeCapture(volumeId);
          await workload.resume(pause.lastSeq + 1).catch((again) => this.onWorkloadError(instanceId, again));
          throw err;
        }
      }
      capture.recordPause(nowMs() - startedAt);
      return capture;
    });
  }

  /** Closes the open capture of a volume (only if it is `captureId`, when given). Idempotent. */
  async closeCapture(volumeId: string, captureId?: string): Promise<void> {
    const capture = this.captures.get(assertId('volumeId', volumeId));
    if (!capture || (captureId !== undefined && capture.captureId !== captureId)) return;
    await capture.close();
  }

  // ---- restores --------------------------------------------------------------------------------

  /** Where restore `restoreId` writes a volume until it is complete; nothing there is taken for a volume. */
  restoringPath(restoreId: string, volumeId: string): string {
    return path.join(this.restoresDir(restoreId), `${assertId('volumeId', volumeId)}.img`);
  }

  private restoresDir(restoreId: string): string {
    return path.join(this.store.root, 'restores', assertId('restoreId', restoreId));
  }

  /**
   * Writes a volume of an instance to be started here from `source`, into restores/<restoreId>/
   * first (resuming at `fromChunk` when that file is still there), then publishes it: image renamed
   * into volumes/, sidecar last, so a half-written image is never taken for a volume. Idempotent:
   * a volume this restore published already is left as it is (returns false). A failure that
   * retrying cannot fix (e.g. a corrupt chunk) removes the partial image.
   */
  async restoreVolume(
    restoreId: string,
    meta: VolumeMeta,
    source: RestoreSource,
    options: RestoreVolumeOptions = {},
  ): Promise<boolean> {
    checkVolumeMeta(meta);
    const { volumeId, instanceId, sizeBytes } = meta;
    return this.lock.run(instanceId, async () => {
      if (this.restoredAlready(restoreId, meta)) return false;
      const { chunkSize, chunkCount } = source;
      if (chunkCount !== Math.ceil(sizeBytes / chunkSize)) {
        throw invalidInput(
          `restore of ${volumeId}: ${chunkCount} chunks of ${chunkSize} bytes do not make a ${sizeBytes}-byte volume`,
        );
      }
      const temp = this.restoringPath(restoreId, volumeId);
      let from = options.fromChunk ?? 0;
      if (!Number.isSafeInteger(from) || from < 0 || from > chunkCount) from = 0;
      // The cursor only counts if the image it describes is still there, at its full size.
      if (from > 0 && fs.statSync(temp, { throwIfNoEntry: false })?.size !== sizeBytes) from = 0;
      fs.mkdirSync(path.dirname(temp), { recursive: true });
      const fh = await openFile(temp, from > 0 ? 'r+' : 'w');
      try {
        if (from === 0) await fh.truncate(sizeBytes);
        for await (const { firstChunk, data } of source.read(from)) {
          await writeFully(fh, data, firstChunk * chunkSize);
          await options.onProgress?.(firstChunk + Math.ceil(data.length / chunkSize));
        }
      } catch (err) {
        await fh.close();
        // Nothing will resume it: the next attempt (if any) would fail the same way.
        if (err instanceof ApplicationFailure && err.nonRetryable) fs.rmSync(temp, { force: true });
        throw err;
      }
      await fh.close();
      await this.store.ensureDir();
      await rename(temp, this.store.imagePath(volumeId));
      await this.store.writeSidecar({ format: 1, ...meta });
      removeDirIfEmpty(path.dirname(temp));
      return true;
    });
  }

  /** True when this restore published the volume already; throws if the id is taken otherwise. */
  private restoredAlready(restoreId: string, meta: VolumeMeta): boolean {
    const { volumeId, instanceId } = meta;
    const record = this.records.get(instanceId);
    if (record && record.restored?.restoreId !== restoreId) {
      throw invalidState(
        `instance ${instanceId} is already on host ${this.hostId} (state ${record.state}): restore it onto another host`,
      );
    }
    const sidecar = this.store.readSidecar(volumeId);
    if (!sidecar) return false;
    if (
      sidecar.instanceId !== instanceId ||
      sidecar.replica ||
      sidecar.sizeBytes !== meta.sizeBytes ||
      sidecar.blockSize !== meta.blockSize
    ) {
      throw invalidState(
        `volume ${volumeId} already exists on host ${this.hostId} (instance ${sidecar.instanceId}, ${sidecar.sizeBytes} bytes${sidecar.replica ? ', a replica being synchronised' : ''}): restore onto another host or delete it first`,
      );
    }
    return true;
  }

  /**
   * Runs an instance whose volumes a restore wrote here, its workload continuing the seq of the
   * shared log. Idempotent for the same restore; refused if a volume is missing. Returns the first
   * seq written here.
   */
  async adoptRestored(restoreId: string, launch: InstanceLaunch): Promise<number> {
    assertId('restoreId', restoreId);
    return this.lock.run(launch.instanceId, async () => {
      const existing = this.records.get(launch.instanceId);
      if (existing) {
        if (existing.restored?.restoreId !== restoreId) {
          throw invalidState(
            `instance ${launch.instanceId} is already on host ${this.hostId} (state ${existing.state}): it cannot be started here from restore ${restoreId}`,
          );
        }
        if (existing.state === 'running' && this.workloads.get(launch.instanceId)?.state !== 'running') {
          await this.startWorkload(existing);
        }
        return existing.restored.resumedAtSeq;
      }
      for (const volume of launch.volumes) {
        const sidecar = this.store.readSidecar(volume.volumeId);
        if (
          !sidecar ||
          sidecar.replica ||
          sidecar.instanceId !== launch.instanceId ||
          sidecar.sizeBytes !== volume.sizeBytes ||
          sidecar.blockSize !== volume.blockSize ||
          !fs.existsSync(this.store.imagePath(volume.volumeId))
        ) {
          throw invalidState(
            `volume ${volume.volumeId} of instance ${launch.instanceId} has not been restored on host ${this.hostId}: restore it (restoreVolume) before starting the instance`,
          );
        }
      }
      // A restore does not know which volumes hold user data; the plan does.
      for (const volume of launch.volumes) {
        const sidecar = this.store.readSidecar(volume.volumeId)!;
        if (sidecar.userData !== volume.userData) {
          await this.store.writeSidecar({ ...sidecar, userData: volume.userData });
        }
      }
      const draft: InstanceRecord = {
        instanceId: launch.instanceId,
        account: launch.account,
        volumes: launch.volumes,
        workload: launch.workload,
        state: 'running',
        lastSeq: 0,
      };
      const resumedAtSeq = this.nextSeq(draft);
      // Saved running before the workload starts, so a restarted agent resumes it.
      const record = this.save({
        ...draft,
        lastSeq: resumedAtSeq - 1,
        restored: { restoreId, resumedAtSeq },
      });
      await this.startWorkload(record);
      fs.rmSync(this.restoresDir(restoreId), { recursive: true, force: true });
      return resumedAtSeq;
    });
  }

  /**
   * Rolls back a restore before its instance started: its partial and published volumes go. A
   * volume an instance here owns is left alone unless that instance is this restore's.
   */
  async discardRestored(restoreId: string, instanceId: string, volumeIds: string[]): Promise<void> {
    assertId('restoreId', restoreId);
    volumeIds.forEach((v) => assertId('volumeId', v));
    await this.lock.run(assertId('instanceId', instanceId), async () => {
      const record = this.records.get(instanceId);
      if (record?.restored?.restoreId === restoreId) await this.deleteInstance(record);
      for (const volumeId of volumeIds) {
        const sidecar = this.store.readSidecar(volumeId);
        if (this.ownerOf(volumeId) || (sidecar && sidecar.instanceId !== instanceId)) continue;
        await this.closeDevice(volumeId);
        await this.store.deleteVolume(volumeId);
      }
      fs.rmSync(this.restoresDir(restoreId), { recursive: true, force: true });
    });
  }

  /**
   * Stops the instance and deletes it and its volumes here, whatever its state (a restore started
   * it elsewhere: two copies must never run). Returns false if it was not here. Idempotent.
   */
  async dropInstance(instanceId: string): Promise<boolean> {
    return this.lock.run(assertId('instanceId', instanceId), async () => {
      const record = this.records.get(instanceId);
      if (!record) return false;
      await this.deleteInstance(record);
      if (record.migration) this.bandwidth.delete(record.migration.migrationId);
      return true;
    });
  }

  // ---- import ----------------------------------------------------------------------------------

  /** Imports an image as a new volume of an instance running here and lets the workload see it. */
  async importVolume(
    meta: VolumeMeta,
    srcPath: string,
    onProgress?: (bytesDone: number) => void,
  ): Promise<{ sha256: string }> {
    return this.lock.run(meta.instanceId, async () => {
      const record = this.require(meta.instanceId);
      if (record.migration || record.state === 'prepared' || record.state === 'stopped') {
        throw invalidState(
          `instance ${meta.instanceId} on host ${this.hostId} is ${record.migration ? `migrating (${record.migration.migrationId})` : record.state}: import a volume when it runs here and is not migrating`,
        );
      }
      const listed = record.volumes.find((v) => v.volumeId === meta.volumeId);
      const sidecar = this.store.readSidecar(meta.volumeId);
      if (listed && !sidecar?.importSha256) {
        throw invalidState(
          `volume ${meta.volumeId} already belongs to instance ${meta.instanceId}: pick another volume id`,
        );
      }
      const { sha256 } = await this.store.importImage(meta, srcPath, onProgress);
      if (!listed) {
        const volume: LaunchVolume = {
          volumeId: meta.volumeId,
          sizeBytes: meta.sizeBytes,
          blockSize: meta.blockSize,
          userData: meta.userData,
        };
        const next = this.update(meta.instanceId, (r) => ({ ...r, volumes: [...r.volumes, volume] }));
        this.workloads.get(meta.instanceId)?.setVolumes(next.volumes);
      }
      return { sha256 };
    });
  }
}
