import { asyncLocalStorage, type Context } from '@temporalio/activity';
import type {
  ImportVolumeInput,
  InstanceLaunch,
  InstanceRef,
  LaunchResult,
  MigrationRef,
  PrepareTargetInput,
  SwitchInput,
  SwitchResult,
  SyncSliceInput,
  SyncSliceResult,
  VerifyInput,
  VerifyResult,
  VolumeExportInput,
  VolumeExportResult,
  VolumeImportResult,
} from '../contracts';
import {
  assertAbsolutePath,
  assertBandwidth,
  assertId,
  assertWorkloadConfig,
  blockCountOf,
  invalidInput,
  invalidState,
} from '../contracts';
import type { HostAgent } from '../fleet/host-agent';
import { checkVolumeMeta } from '../fleet/host-store';

const HEARTBEAT_EVERY_MS = 1000;

/** The activity context when called by a worker (or MockActivityEnvironment); undefined in a plain call. */
function context(): Context | undefined {
  return asyncLocalStorage.getStore();
}

/** Heartbeats on a timer while `work` runs, for steps with no progress callback of their own. */
async function withHeartbeat<T>(work: () => Promise<T>): Promise<T> {
  const ctx = context();
  if (!ctx) return work();
  const timer = setInterval(() => ctx.heartbeat(), HEARTBEAT_EVERY_MS);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
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
export function createHostActivities(agent: HostAgent) {
  return {
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
      const progress = await replica.copy({
        startBlock,
        maxMs: input.maxSliceMs,
        bandwidth: () => agent.syncBandwidth(migrationId),
        signal: ctx?.cancellationSignal,
        onChunk: (p) => ctx?.heartbeat({ cursor: p.cursor }),
      });
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
      return withHeartbeat(() => replica.verify());
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
      const destPath = assertAbsolutePath('path', input.path);
      // An unknown volume fails NotFound here, before the image file is created.
      const device = await agent.device(volumeId);
      const { sha256, sizeBytes } = await withHeartbeat(() => agent.store.exportImage(device, destPath));
      return { volumeId, hostId: agent.hostId, path: destPath, sizeBytes, sha256 };
    },
  };
}

export type HostActivities = ReturnType<typeof createHostActivities>;
