import { asyncLocalStorage, type Context } from '@temporalio/activity';
import * as fs from 'node:fs';
import type {
  ImportVolumeInput,
  InstanceLaunch,
  InstanceRef,
  LaunchResult,
  MigrationRef,
  PrepareTargetInput,
  RestoreVolumeInput,
  SnapshotInfo,
  SnapshotUploadMeta,
  SnapshotVolumeInput,
  StartRestoredInput,
  SwitchInput,
  SwitchResult,
  SyncSliceInput,
  SyncSliceResult,
  VerifyInput,
  VerifyResult,
  VolumeExportInput,
  VolumeExportResult,
  VolumeImportResult,
  VolumeSnapshot,
} from '../contracts';
import {
  assertAbsolutePath,
  assertBandwidth,
  assertId,
  assertWorkloadConfig,
  blockCountOf,
  ErrorType,
  forbidden,
  invalidInput,
  invalidState,
  notFound,
} from '../contracts';
import { assertOutsideDataDir } from '../fleet/data-dir-guard';
import type { HostAgent } from '../fleet/host-agent';
import { checkVolumeMeta } from '../fleet/host-store';
import type { LendAt, SnapshotStore, SnapshotWriter } from '../fleet/snapshot-store';
import type { VolumeCapture } from '../fleet/volume-capture';

const HEARTBEAT_EVERY_MS = 1000;

/** The activity context when called by a worker (or MockActivityEnvironment); undefined in a plain call. */
function context(): Context | undefined {
  return asyncLocalStorage.getStore();
}

/**
 * Heartbeats on a timer while `work` runs, for steps with no progress callback of their own. With
 * `details`, each beat carries the latest of them, so the timer never overwrites a resume cursor.
 */
async function withHeartbeat<T>(work: () => Promise<T>, details?: () => unknown): Promise<T> {
  const ctx = context();
  if (!ctx) return work();
  const timer = setInterval(() => ctx.heartbeat(details?.()), HEARTBEAT_EVERY_MS);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}

/** A cancelled activity stops at its next step and reports the cancellation the way Temporal expects. */
async function checkCancelled(): Promise<void> {
  const ctx = context();
  if (ctx?.cancellationSignal.aborted) await ctx.cancelled;
}

const MIN_CHUNK_BYTES = 4096;
/**
 * A lent batch costs no memory (the image is hashed and stored from the page cache), so batches are
 * larger than when reading: half the per-batch object puts. A workload write to a block of a lent
 * batch does not wait for it (VolumeCapture.lendBlocks), so how many are in flight is a matter of
 * keeping the hashing workers fed: a 1 GiB snapshot took a median 748 ms end to end with four, 785
 * with three (ten runs each, interleaved).
 */
const LENT_UPLOAD = { batchBytes: 32 * 1024 * 1024, inFlight: 4 };
/** Restores read (and heartbeat) in batches of this much. */
const RESTORE_BATCH_BYTES = 8 * 1024 * 1024;

/** The snapshot's dedupe unit: the block, or whole blocks adding up to the store's smallest chunk. */
function chunkSizeFor(blockSize: number): number {
  return blockSize >= MIN_CHUNK_BYTES ? blockSize : blockSize * Math.ceil(MIN_CHUNK_BYTES / blockSize);
}

/** What the capture of a snapshot measured, kept beside it so a retry after the commit returns it. */
interface CaptureFacts {
  snapshotId: string;
  atSeq: number;
  pausedMs: number;
}

const captureFactsKey = (account: string, snapshotId: string) =>
  `${account}/snapshots/${snapshotId}.capture.json`;

/**
 * Volume bytes as of the capture's instant, for SnapshotWriter.uploadLent: it asks for whole chunks
 * (whole blocks) in increasing order, each range once, which is what a capture hands out. A plain
 * image is lent in place (hashed and stored without a copy through a buffer); a replica still
 * reading through to its source is read.
 */
function captureLender(capture: VolumeCapture): LendAt {
  return async (position, length, scratch, use) => {
    await checkCancelled();
    if (position % capture.blockSize !== 0 || position >= capture.sizeBytes) {
      throw new Error(
        `snapshot read at byte ${position} of volume ${capture.volumeId} is not at a block boundary inside the volume`,
      );
    }
    const first = position / capture.blockSize;
    const count = Math.min(Math.ceil(length / capture.blockSize), capture.blockCount - first);
    if (capture.lendsInPlace) {
      await capture.lendBlocks(first, count, use);
      return;
    }
    const data = await capture.readBlocks(first, count, { into: scratch() });
    await use(data.subarray(0, length));
  };
}

/** Everything about a launch that can be wrong, checked before anything touches the disk. */
function checkLaunch(launch: InstanceLaunch): void {
  const instanceId = assertId('instanceId', launch?.instanceId);
  assertId('account', launch.account);
  if (!Array.isArray(launch.volumes)) throw invalidInput(`instance ${instanceId}: volumes must be a list`);
  const seen = new Set<string>();
  for (const volume of launch.volumes) {
    checkVolumeMeta({ ...volume, instanceId });
    if (seen.has(volume.volumeId))
      throw invalidInput(`instance ${instanceId}: volume ${volume.volumeId} is listed twice`);
    seen.add(volume.volumeId);
  }
  assertWorkloadConfig(`instance ${instanceId} workload`, launch.workload);
}

/**
 * Activities served by one host's agent on that host's task queue. Each is idempotent: a retry
 * after a crash finds the work done (or half done, and resumes it) and never applies it twice.
 */
export function createHostActivities(agent: HostAgent, snapshots: SnapshotStore) {
  /** The committed snapshot with its capture's figures, or undefined if it is not committed yet. */
  async function committedSnapshot(input: SnapshotVolumeInput): Promise<VolumeSnapshot | undefined> {
    let info: SnapshotInfo;
    try {
      info = await snapshots.info(input.account, input.snapshotId);
    } catch (err) {
      if ((err as { type?: string }).type === ErrorType.NotFound) return undefined;
      throw err;
    }
    if (info.instanceId !== input.instanceId || info.volumeId !== input.volumeId) {
      throw invalidInput(
        `snapshot ${info.snapshotId} already exists, of volume ${info.volumeId} of instance ${info.instanceId}: use another snapshot id`,
      );
    }
    return withCaptureFacts(info);
  }

  async function withCaptureFacts(info: SnapshotInfo): Promise<VolumeSnapshot> {
    const raw = await snapshots.objects.get(captureFactsKey(info.account, info.snapshotId));
    if (!raw) {
      throw invalidState(
        `snapshot ${info.snapshotId} exists but was not taken by a host snapshot (its point in time is unknown): use another snapshot id`,
      );
    }
    const facts = JSON.parse(raw.toString('utf8')) as CaptureFacts;
    return { ...info, atSeq: facts.atSeq, pausedMs: facts.pausedMs };
  }

  /** Uploads every chunk as of the capture's instant, then keeps its figures and commits. */
  async function uploadCapture(writer: SnapshotWriter, capture: VolumeCapture): Promise<VolumeSnapshot> {
    const ctx = context();
    let progress = { bytesUploaded: 0, nextChunk: 0, chunkCount: writer.chunkCount };
    // The timer heartbeats the latest progress meanwhile: a heartbeat per batch cost the busy main
    // thread about half a millisecond each, and the SDK sends the server one per throttle interval
    // whatever it is given. The whole upload is reported once it is done.
    await withHeartbeat(
      () =>
        writer.uploadLent(captureLender(capture), {
          fromChunk: 0,
          ...(capture.lendsInPlace ? LENT_UPLOAD : {}),
          onProgress: (p) => {
            progress = p;
          },
        }),
      () => progress,
    );
    ctx?.heartbeat(progress);
    const { account, snapshotId } = writer.meta;
    // Before the commit: once the snapshot exists, so do the figures a retry returns.
    const facts: CaptureFacts = { snapshotId, atSeq: capture.atSeq, pausedMs: capture.pausedMs };
    await snapshots.objects.put(captureFactsKey(account, snapshotId), Buffer.from(JSON.stringify(facts)));
    const info = await writer.commit();
    return { ...info, atSeq: facts.atSeq, pausedMs: facts.pausedMs };
  }

  return {
    /**
     * Snapshots one volume of an instance running here, as of one instant (a short pause that does
     * not grow with the volume), into the account's snapshot store. A retry after the commit
     * returns the committed snapshot; before it, a retry takes a new instant and uploads every
     * chunk again (chunks stored by the earlier attempt cost only their hashing).
     */
    async snapshotVolume(input: SnapshotVolumeInput): Promise<VolumeSnapshot> {
      const snapshotId = assertId('snapshotId', input?.snapshotId);
      const account = assertId('account', input.account);
      const instanceId = assertId('instanceId', input.instanceId);
      const volumeId = assertId('volumeId', input.volumeId);
      const committed = await committedSnapshot(input);
      if (committed) return committed;

      const record = agent.instance(instanceId);
      if (!record) {
        throw notFound(
          `instance ${instanceId} is not on host ${agent.hostId}: snapshot it on the host that runs it`,
        );
      }
      if (record.account !== account) {
        throw forbidden(
          `instance ${instanceId} does not belong to account ${account}: use the owning account`,
        );
      }
      const volume = record.volumes.find((v) => v.volumeId === volumeId);
      if (!volume) {
        throw notFound(
          `volume ${volumeId} is not a volume of instance ${instanceId} on host ${agent.hostId}`,
        );
      }
      const meta: SnapshotUploadMeta = {
        snapshotId,
        account,
        instanceId,
        volumeId,
        sizeBytes: volume.sizeBytes,
        blockSize: volume.blockSize,
        chunkSize: chunkSizeFor(volume.blockSize),
        sourceEvent: input.event,
        createdAt: input.createdAt,
      };
      // Validates the event and time before the instance pauses for anything. Opening may wait for
      // the account's garbage collection: heartbeat meanwhile, or the server takes us for dead.
      // What an earlier attempt stored is of an earlier instant, so this one starts over: its
      // manifest must name none of it (those chunks stay in the store, for dedupe).
      const writer = await withHeartbeat(() => snapshots.openUpload(meta, { startOver: true }));
      if (writer.done) return withCaptureFacts(await writer.commit());

      let capture: VolumeCapture | undefined;
      try {
        capture = await withHeartbeat(() => agent.openCapture(instanceId, volumeId, snapshotId));
        return await uploadCapture(writer, capture);
      } catch (err) {
        // Frees the upload's lock now rather than when it goes stale; a retry starts over anyway.
        await writer.abort().catch(() => undefined);
        throw err;
      } finally {
        // This attempt's capture, not by id: a retry of this activity reopens the same id, and an
        // attempt the server gave up on must not close the retry's capture when it ends.
        await capture?.close();
      }
    },

    /**
     * Writes one volume of an instance from its snapshot on this host (the restore's target),
     * every chunk verified by hash; heartbeats a chunk cursor and resumes from it. The volume is
     * published only once complete.
     */
    async restoreVolume(input: RestoreVolumeInput): Promise<{ volumeId: string; bytesRestored: number }> {
      const restoreId = assertId('restoreId', input?.restoreId);
      const account = assertId('account', input.account);
      const snapshotId = assertId('snapshotId', input.snapshotId);
      const instanceId = assertId('instanceId', input.instanceId);
      const volumeId = assertId('volumeId', input.volumeId);
      // Refuses another account's snapshot (Forbidden) before anything is written.
      const manifest = await snapshots.get(account, snapshotId);
      if (manifest.instanceId !== instanceId || manifest.volumeId !== volumeId) {
        throw invalidInput(
          `snapshot ${snapshotId} is of volume ${manifest.volumeId} of instance ${manifest.instanceId}, not of ${volumeId} of ${instanceId}`,
        );
      }
      const ctx = context();
      const details = ctx?.info.heartbeatDetails as { snapshotId?: unknown; cursor?: unknown } | undefined;
      const fromChunk =
        details?.snapshotId === snapshotId && typeof details.cursor === 'number' ? details.cursor : 0;
      let cursor = fromChunk;
      const batchChunks = Math.max(1, Math.floor(RESTORE_BATCH_BYTES / manifest.chunkSize));
      await withHeartbeat(
        () =>
          agent.restoreVolume(
            restoreId,
            {
              volumeId,
              instanceId,
              sizeBytes: manifest.sizeBytes,
              blockSize: manifest.blockSize,
              // Not known from the snapshot: startRestored sets it from the plan.
              userData: false,
            },
            {
              chunkSize: manifest.chunkSize,
              chunkCount: manifest.chunkCount,
              read: (from) => snapshots.readAll(account, snapshotId, { fromChunk: from, batchChunks }),
            },
            {
              fromChunk,
              onProgress: async (nextChunk) => {
                cursor = nextChunk;
                ctx?.heartbeat({ snapshotId, cursor });
                await checkCancelled();
              },
            },
          ),
        () => ({ snapshotId, cursor }),
      );
      return { volumeId, bytesRestored: manifest.sizeBytes };
    },

    /** Runs a restored instance here (its volumes restored already), its workload seq continuing. */
    async startRestored(input: StartRestoredInput): Promise<{ resumedAtSeq: number }> {
      const restoreId = assertId('restoreId', input?.restoreId);
      const instanceId = assertId('instanceId', input.instanceId);
      if (!Array.isArray(input.volumes) || input.volumes.length === 0) {
        throw invalidInput(`restore ${restoreId} of ${instanceId}: volumes must list the restored volumes`);
      }
      const launch: InstanceLaunch = {
        instanceId,
        account: input.account,
        volumes: input.volumes.map(({ volumeId, sizeBytes, blockSize, userData }) => ({
          volumeId,
          sizeBytes,
          blockSize,
          userData,
        })),
        workload: input.workload,
      };
      checkLaunch(launch);
      const resumedAtSeq = await withHeartbeat(() => agent.adoptRestored(restoreId, launch));
      return { resumedAtSeq };
    },

    /** Rolls back a restore on its target before the instance started there. Idempotent. */
    async discardRestored(input: {
      restoreId: string;
      instanceId: string;
      volumeIds: string[];
    }): Promise<void> {
      const restoreId = assertId('restoreId', input?.restoreId);
      const instanceId = assertId('instanceId', input.instanceId);
      if (!Array.isArray(input.volumeIds)) throw invalidInput('volumeIds must be a list of volume ids');
      const volumeIds = input.volumeIds.map((v, n) => assertId(`volumeIds[${n}]`, v));
      await withHeartbeat(() => agent.discardRestored(restoreId, instanceId, volumeIds));
    },

    /**
     * On the host an instance was restored away from: stops it and deletes it and its volumes, in
     * whatever state it is, so two copies never run. Absent already: nothing to do.
     */
    async dropInstance(input: { instanceId: string; reason: string }): Promise<void> {
      const instanceId = assertId('instanceId', input?.instanceId);
      if (typeof input.reason !== 'string' || input.reason.length === 0 || input.reason.length > 200) {
        throw invalidInput(
          `dropping ${instanceId}: give a reason of 1 to 200 characters (e.g. "restored on h-3")`,
        );
      }
      const dropped = await withHeartbeat(() => agent.dropInstance(instanceId));
      if (dropped) context()?.log.info(`dropped ${instanceId} from ${agent.hostId}: ${input.reason}`);
    },

    /** Create the instance's volumes (if missing) and start it. */
    async launchInstances(launches: InstanceLaunch[]): Promise<LaunchResult[]> {
      if (!Array.isArray(launches)) throw invalidInput('launchInstances takes a list of instance launches');
      launches.forEach(checkLaunch);
      const results: LaunchResult[] = [];
      for (const launch of launches) {
        const record = await withHeartbeat(() => agent.launch(launch));
        context()?.heartbeat({ launched: results.length + 1 });
        results.push({ instanceId: record.instanceId, volumes: record.volumes.length });
      }
      return results;
    },

    /** Target side: empty replica volumes that read through to the source, instance not yet running. */
    async prepareTarget(input: PrepareTargetInput): Promise<void> {
      assertId('migrationId', input?.migrationId);
      assertId('sourceHostId', input.sourceHostId);
      checkLaunch(input.launch);
      if (input.sourceHostId === agent.hostId) {
        throw invalidInput(
          `migration ${input.migrationId}: source and target are both host ${agent.hostId}; pick another target`,
        );
      }
      await agent.prepareTarget(input.migrationId, input.sourceHostId, input.launch);
    },

    /** Target side: pause the instance on the source (via the peer link), start it here. The only downtime. */
    async switchToTarget(input: SwitchInput): Promise<SwitchResult> {
      assertId('migrationId', input?.migrationId);
      assertId('instanceId', input.instanceId);
      assertId('sourceHostId', input.sourceHostId);
      return agent.switchIn(input.migrationId, input.instanceId, input.sourceHostId);
    },

    /** Source side: make sure the instance runs here again (compensation when a switch failed). */
    async resumeInstance(input: InstanceRef): Promise<void> {
      await agent.resumeInstance(assertId('instanceId', input?.instanceId));
    },

    /** Target side: background copy of missing blocks for up to maxSliceMs, heartbeating its cursor. */
    async syncVolumeSlice(input: SyncSliceInput): Promise<SyncSliceResult> {
      const migrationId = assertId('migrationId', input?.migrationId);
      const volumeId = assertId('volumeId', input.volumeId);
      assertId('sourceHostId', input.sourceHostId);
      const bandwidth = assertBandwidth(input.bandwidthBytesPerSec);
      if (
        typeof input.maxSliceMs !== 'number' ||
        !Number.isFinite(input.maxSliceMs) ||
        input.maxSliceMs <= 0
      ) {
        throw invalidInput(
          `maxSliceMs ${String(input.maxSliceMs)} must be a positive number of milliseconds`,
        );
      }
      const { record, migration } = agent.targetMigration(volumeId, migrationId);
      if (!migration) {
        // Finalized already: a late retry reports the finished sync.
        const volume = record.volumes.find((v) => v.volumeId === volumeId)!;
        const blocksTotal = blockCountOf(volume);
        const sync = agent.store.readSidecar(volumeId)?.sync;
        return {
          done: true,
          blocksDone: blocksTotal,
          blocksTotal,
          bytesCopied: 0,
          bytesReadThrough: sync?.bytesReadThrough ?? 0,
          bytesRecopied: sync?.bytesRecopied ?? 0,
        };
      }
      if (migration.sourceHostId !== input.sourceHostId) {
        throw invalidInput(
          `migration ${migrationId} receives ${volumeId} from host ${migration.sourceHostId}, not ${input.sourceHostId}`,
        );
      }
      const ctx = context();
      agent.initSyncBandwidth(migrationId, bandwidth, (ctx?.info.attempt ?? 1) === 1);
      const replica = await agent.replica(volumeId);
      const details = ctx?.info.heartbeatDetails as { cursor?: unknown } | undefined;
      const cursor = details?.cursor;
      const startBlock =
        Number.isSafeInteger(cursor) && (cursor as number) >= 0 && (cursor as number) < replica.blockCount
          ? (cursor as number)
          : 0;
      // A source that stays unreadable fails the slice for good, naming the blocks at risk.
      const progress = await agent.watchSource(migrationId, volumeId, 'sync', () =>
        replica.copy({
          startBlock,
          maxMs: input.maxSliceMs,
          bandwidth: () => agent.syncBandwidth(migrationId),
          signal: ctx?.cancellationSignal,
          onChunk: (p) => ctx?.heartbeat({ cursor: p.cursor }),
        }),
      );
      // The copy stops quietly on abort; report the cancellation the way Temporal expects it.
      if (ctx?.cancellationSignal.aborted) await ctx.cancelled;
      const counters = replica.counters();
      return {
        done: progress.done,
        blocksDone: progress.blocksDone,
        blocksTotal: progress.blocksTotal,
        bytesCopied: progress.bytesCopied,
        bytesReadThrough: counters.bytesReadThrough,
        bytesRecopied: counters.bytesRecopied,
      };
    },

    /** Target side: change the rate limit of a running (or the next) sync slice of this migration. */
    async setSyncBandwidth(input: { migrationId: string; bytesPerSec: number }): Promise<void> {
      assertId('migrationId', input?.migrationId);
      agent.setSyncBandwidth(input.migrationId, assertBandwidth(input.bytesPerSec));
    },

    /** Target side: hash-compare every block copied from the source (blocks written here since the switch are skipped). */
    async verifyVolume(input: VerifyInput): Promise<VerifyResult> {
      const migrationId = assertId('migrationId', input?.migrationId);
      const volumeId = assertId('volumeId', input.volumeId);
      assertId('sourceHostId', input.sourceHostId);
      const { migration } = agent.targetMigration(volumeId, migrationId);
      if (!migration) {
        throw invalidState(
          `volume ${volumeId} on host ${agent.hostId} is already finalized: there is nothing left to verify`,
        );
      }
      if (migration.sourceHostId !== input.sourceHostId) {
        throw invalidInput(
          `migration ${migrationId} receives ${volumeId} from host ${migration.sourceHostId}, not ${input.sourceHostId}`,
        );
      }
      const replica = await agent.replica(volumeId);
      return withHeartbeat(() => agent.watchSource(migrationId, volumeId, 'verify', () => replica.verify()));
    },

    /** Target side: the replicas are complete; drop the sync maps and the link to the source. */
    async finalizeTarget(input: MigrationRef): Promise<void> {
      assertId('migrationId', input?.migrationId);
      await agent.finalizeTarget(input.migrationId, assertId('instanceId', input.instanceId));
    },

    /** Target side rollback before the switch: delete replica volumes and any trace of the instance. */
    async discardTarget(input: MigrationRef): Promise<void> {
      assertId('migrationId', input?.migrationId);
      await agent.discardTarget(input.migrationId, assertId('instanceId', input.instanceId));
    },

    /** Source side after a completed sync: stop the instance and delete its volumes. */
    async releaseSource(input: MigrationRef): Promise<void> {
      assertId('migrationId', input?.migrationId);
      await agent.releaseSource(input.migrationId, assertId('instanceId', input.instanceId));
    },

    async importVolume(input: ImportVolumeInput): Promise<VolumeImportResult> {
      const instanceId = assertId('instanceId', input?.instanceId);
      const meta = {
        volumeId: input.volumeId,
        instanceId,
        sizeBytes: input.sizeBytes,
        blockSize: input.blockSize,
        userData: input.userData,
      };
      checkVolumeMeta(meta);
      const srcPath = assertAbsolutePath('path', input.path);
      const ctx = context();
      const { sha256 } = await withHeartbeat(() =>
        agent.importVolume(meta, srcPath, (bytesDone) => ctx?.heartbeat({ bytesDone })),
      );
      return { volumeId: meta.volumeId, instanceId, hostId: agent.hostId, sizeBytes: meta.sizeBytes, sha256 };
    },

    async exportVolume(input: VolumeExportInput): Promise<VolumeExportResult> {
      const volumeId = assertId('volumeId', input?.volumeId);
      const destPath = assertOutsideDataDir('path', assertAbsolutePath('path', input.path), agent.dataDir);
      if (fs.statSync(destPath, { throwIfNoEntry: false })?.isDirectory()) {
        throw invalidInput(`path ${destPath} is a directory: give the path of the image file to write`);
      }
      // An unknown volume fails NotFound here, before the image file is created.
      const device = await agent.device(volumeId);
      const { sha256, sizeBytes } = await withHeartbeat(() => agent.store.exportImage(device, destPath));
      return { volumeId, hostId: agent.hostId, path: destPath, sizeBytes, sha256 };
    },
  };
}

export type HostActivities = ReturnType<typeof createHostActivities>;
