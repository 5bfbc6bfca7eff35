import {
  ActivityFailure,
  allHandlersFinished,
  ApplicationFailure,
  CancellationScope,
  CancelledFailure,
  condition,
  executeChild,
  isCancellation,
  log,
  patched,
  proxyActivities,
  setCurrentDetails,
  type ActivityOptions,
  setHandler,
  TimeoutFailure,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';
import {
  assertBandwidth,
  assertId,
  assertObject,
  blockCountOf,
  BOUNDED,
  CONTROL_ACTIVITY_OPTIONS,
  dataIntegrity,
  errorMessage,
  formatBytes,
  formatDuration,
  formatList,
  hostActivityOptions,
  RETRY,
  showPhase,
  surfaceFailure,
  upsertVisibility,
  invalidInput,
  invalidState,
  Operation,
  progressQuery,
  setBandwidthUpdate,
  type LiveMigrationInput,
  type LiveMigrationResult,
  type MigrationPhase,
  type MigrationPlan,
  type MigrationProgress,
  type SwitchResult,
  type SyncSliceResult,
  type VolumeRecord,
  type PreMigrationSnapshotResult,
  type RestoreInstanceResult,
  WorkflowType,
} from '../contracts';
import type { preMigrationSnapshot } from './pre-migration-snapshot';
import type { restoreInstance } from './restore-instance';

/** Activity stubs with rehome's defaults; `options` override them for one group of calls. */
function controlActivities(options: Partial<ActivityOptions> = {}) {
  return proxyActivities<ControlActivities>({ ...CONTROL_ACTIVITY_OPTIONS, ...options });
}

function hostActivities(hostId: string, options: Partial<ActivityOptions> = {}) {
  return proxyActivities<HostActivities>({ ...hostActivityOptions(hostId), ...options });
}

/** A slice returns after about this long, so progress (and the Web UI) moves every few seconds. */
const MAX_SLICE_MS = 5_000;
/** Verify passes per volume; mismatches in between are re-copied. More means something is broken. */
const MAX_VERIFY_ROUNDS = 3;

const SYNC_SLICE_OPTIONS = { startToCloseTimeout: '10 minutes', heartbeatTimeout: '20s' } as const;

/**
 * The target holds every block, verified, when the source is released. A source agent that has not
 * answered the release in this long is taken for dead: the migration commits without it and says
 * what is left on the source, instead of waiting in 'releasing' for a host that may never return.
 */
const SOURCE_RELEASE_GIVE_UP = '10 minutes';

/**
 * With a snapshot to fall back on, a source that does not take its instance back within this long
 * after a failed switch counts as lost (taking an instance back is one local call: a host that
 * cannot do it in ten seconds is not coming back soon). Without one the rollback waits, however long.
 */
const SOURCE_LOST_AFTER: Partial<ActivityOptions> = {
  scheduleToCloseTimeout: '10s',
  retry: { ...RETRY, maximumAttempts: 3 },
};

interface VolumeSync {
  volume: VolumeRecord;
  blocksDone: number;
  blocksTotal: number;
  bytesReadThrough: number;
  /** The engine's own count of bytes it copied twice (e.g. after a crash), cumulative. */
  bytesRecopied: number;
  blocksVerified: number;
  blocksWrittenOnTarget: number;
}

/**
 * Post-sync live migration: the instance switches to the target first and its disks are copied
 * afterwards, with the target as primary and the source as secondary. Everything before the switch
 * can be undone; after it the source is no longer authoritative, so the migration only goes forward.
 */
export async function liveMigration(input: LiveMigrationInput): Promise<LiveMigrationResult> {
  const request = validateMigrationInput(input);
  const migrationId = assertId('workflow id (the migration id)', workflowInfo().workflowId);
  try {
    return await new Migration(migrationId, request).run();
  } catch (err) {
    throw surfaceFailure(err);
  }
}

function validateMigrationInput(input: unknown) {
  const fields = assertObject('live migration input', input);
  const instanceId = assertId('instanceId', fields.instanceId);
  const targetHostId = assertId('targetHostId', fields.targetHostId);
  const bandwidth =
    fields.bandwidthBytesPerSec === undefined || fields.bandwidthBytesPerSec === null
      ? 0
      : assertBandwidth(fields.bandwidthBytesPerSec);
  const flag = (name: string, fallback: boolean) => {
    const value = fields[name];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'boolean')
      throw invalidInput(`${name} must be true or false, not ${JSON.stringify(value)}`);
    return value;
  };
  return {
    instanceId,
    targetHostId,
    bandwidth,
    snapshot: flag('snapshot', true),
    keepSnapshot: flag('keepSnapshot', false),
  };
}

type MigrationRequest = ReturnType<typeof validateMigrationInput>;

class Migration {
  private readonly control = controlActivities();
  private readonly boundedControl = controlActivities(BOUNDED);
  private readonly target;
  private readonly boundedTarget;
  private readonly startedAt = Date.now();
  private readonly progress: MigrationProgress;
  /** Workflow time per phase (re-entered phases add up), for the result and the benchmark. */
  private readonly phaseMs: Partial<Record<MigrationPhase, number>> = {};
  private phaseStartedAt = Date.now();

  private plan?: MigrationPlan;
  private volumes: VolumeSync[] = [];
  private syncStartedAt?: number;
  /** Set before each undoable step is attempted: its undo is idempotent, and a timed-out attempt may have acted. */
  private reserveAttempted = false;
  private prepareAttempted = false;
  private switchAttempted = false;
  /** While the copy runs (syncing and re-syncs during verify), bandwidth changes go to the running slice. */
  private copyActive = false;
  private snapshot?: PreMigrationSnapshotResult;
  /** A failed switch's rollback could not give the instance back to its source. */
  private sourceLost = false;
  /** False when the source never answered its release (its stale copy is left there). */
  private sourceReleased = true;
  private readonly instanceId: string;
  private readonly targetHostId: string;
  private bandwidth: number;

  constructor(
    private readonly migrationId: string,
    private readonly request: MigrationRequest,
  ) {
    const { instanceId, targetHostId, bandwidth } = request;
    this.instanceId = instanceId;
    this.targetHostId = targetHostId;
    this.bandwidth = bandwidth;
    this.target = hostActivities(targetHostId);
    this.boundedTarget = hostActivities(targetHostId, BOUNDED);
    this.progress = {
      phase: 'validating',
      instanceId,
      targetHostId,
      blocksDone: 0,
      blocksTotal: 0,
      bytesCopied: 0,
      bytesTotal: 0,
      rateBytesPerSec: 0,
      etaSeconds: null,
      bandwidthBytesPerSec: bandwidth,
      switched: false,
      cancelRefused: false,
    };
  }

  async run(): Promise<LiveMigrationResult> {
    setHandler(progressQuery, () => ({ ...this.progress }));
    setHandler(setBandwidthUpdate, (bytesPerSec) => this.setBandwidth(bytesPerSec), {
      validator: (bytesPerSec) => void assertBandwidth(bytesPerSec),
    });
    // A cancel that arrives after the switch cannot be honoured: the source is no longer authoritative.
    const root = CancellationScope.current();
    void root.cancelRequested.catch(() => {
      if (this.progress.switched) this.refuseCancel();
    });
    upsertVisibility({
      operation: Operation.liveMigration,
      instanceId: this.instanceId,
      hostId: this.targetHostId,
    });

    const plan = await this.undoable(() => this.prepare());
    if (patched('pre-migration-snapshot')) await this.undoable(() => this.snapshotBefore(plan));
    let switched: SwitchResult;
    try {
      switched = await this.undoable(() => this.switchOver(plan));
    } catch (err) {
      if (this.sourceLost && this.snapshot) return await this.restoreElsewhere(plan, err);
      throw err;
    }
    this.progress.switched = true;
    if (root.consideredCancelled) this.refuseCancel();
    return await CancellationScope.nonCancellable(() => this.completeAfterSwitch(plan, switched));
  }

  /** A child preMigrationSnapshot of the instance-store volumes, as close to the switch as possible. */
  private async snapshotBefore(plan: MigrationPlan): Promise<void> {
    const local = plan.volumes.filter((v) => v.kind === 'instance-store');
    if (!this.request.snapshot || local.length === 0) return;
    this.enterPhase(
      'snapshotting',
      `**snapshotting** ${local.length} instance-store volume(s) of ${this.instanceId} on ${plan.sourceHostId} before the switch`,
    );
    this.snapshot = await executeChild<typeof preMigrationSnapshot>(WorkflowType.preMigrationSnapshot, {
      workflowId: `${this.migrationId}-snapshot`,
      // A static summary is given by whoever starts a workflow: for a child, its parent.
      staticSummary: `snapshot ${this.instanceId} on ${plan.sourceHostId} (before ${this.migrationId})`,
      args: [{ instanceId: this.instanceId, account: plan.account, event: `migration:${this.migrationId}` }],
    });
    this.throwIfCancelled();
  }

  /**
   * The switch failed and the source cannot take the instance back: start it from its snapshot on a
   * host that is neither of the two. Writes after the snapshot's instant are lost, and the result says so.
   */
  private async restoreElsewhere(plan: MigrationPlan, cause: unknown): Promise<LiveMigrationResult> {
    const snapshot = this.snapshot!;
    const snapshotIds = snapshot.snapshots.map((s) => s.snapshotId);
    this.enterPhase(
      'restoring',
      `**restoring** ${this.instanceId} from ${snapshotIds.join(', ')}: the switch failed (${errorMessage(cause)}) and ${plan.sourceHostId} is lost`,
    );
    const restored: RestoreInstanceResult = await CancellationScope.nonCancellable(() =>
      executeChild<typeof restoreInstance>(WorkflowType.restoreInstance, {
        workflowId: `restore-${this.instanceId}-${uuid4().slice(0, 8)}`,
        staticSummary: `restore ${this.instanceId} from ${snapshotIds.join(', ')} → a placed host (after ${this.migrationId} lost ${plan.sourceHostId})`,
        args: [
          {
            account: plan.account,
            snapshotIds,
            avoidHostIds: [plan.sourceHostId, this.targetHostId],
            reason: `migration:${this.migrationId}`,
          },
        ],
      }),
    );
    const atSeq = Math.min(...snapshot.snapshots.map((s) => s.atSeq));
    this.enterPhase(
      'restored',
      `**restored** ${this.instanceId} runs on ${restored.hostId} from ${snapshotIds.join(', ')} (writes after seq ${atSeq} are lost); ${plan.sourceHostId} was lost and the switch to ${this.targetHostId} failed`,
    );
    return {
      ...this.result(
        plan,
        { lastSourceSeq: atSeq, pausedAtMs: 0, resumedAtMs: 0, downtimeMs: 0 },
        Date.now() - this.startedAt,
      ),
      snapshotIds,
      restored,
    };
  }

  /** validating → reserving → instantiating: all of it is undone by a rollback. */
  private async prepare(): Promise<MigrationPlan> {
    this.enterPhase('validating', `**validating** migration of ${this.instanceId} to ${this.targetHostId}`);
    const plan = await this.boundedControl.planMigration.executeWithOptions(
      { summary: `plan ${this.instanceId} → ${this.targetHostId}` },
      [
        {
          instanceId: this.instanceId,
          targetHostId: this.targetHostId,
          bandwidthBytesPerSec: this.bandwidth,
        },
      ],
    );
    this.acceptPlan(plan);

    const { resources } = plan;
    this.enterPhase(
      'reserving',
      `**reserving** ${resources.vcpu} vCPU, ${resources.memoryMiB} MiB, ${formatBytes(resources.diskBytes)} on ${this.targetHostId} for ${this.instanceId}`,
    );
    this.reserveAttempted = true;
    await this.boundedControl.reserveCapacity.executeWithOptions(
      { summary: `reserve ${this.targetHostId} for ${this.instanceId}` },
      [{ key: this.migrationId, hostId: this.targetHostId, instanceId: this.instanceId, resources }],
    );
    this.throwIfCancelled();

    this.enterPhase(
      'instantiating',
      `**instantiating** ${this.instanceId} on ${this.targetHostId}: ${plan.volumes.length} empty replica volume(s), ${formatBytes(this.progress.bytesTotal)}, reading through to ${plan.sourceHostId}`,
    );
    this.prepareAttempted = true;
    await this.boundedTarget.prepareTarget.executeWithOptions(
      { summary: `prepare replicas of ${this.instanceId} on ${this.targetHostId}` },
      [
        {
          migrationId: this.migrationId,
          sourceHostId: plan.sourceHostId,
          launch: {
            instanceId: plan.instanceId,
            account: plan.account,
            volumes: plan.volumes.map(({ volumeId, sizeBytes, blockSize, userData }) => ({
              volumeId,
              sizeBytes,
              blockSize,
              userData,
            })),
            workload: plan.workload,
          },
        },
      ],
    );
    this.throwIfCancelled();
    return plan;
  }

  /** The only downtime: pause on the source, resume on the target. Never interrupted half way. */
  private async switchOver(plan: MigrationPlan): Promise<SwitchResult> {
    this.enterPhase(
      'switching',
      `**switching** ${this.instanceId} ${plan.sourceHostId} → ${this.targetHostId}: pause on the source, resume on the target`,
    );
    this.switchAttempted = true;
    return await CancellationScope.nonCancellable(() =>
      this.target.switchToTarget.executeWithOptions(
        {
          startToCloseTimeout: '30s',
          retry: { ...RETRY, maximumAttempts: 3 },
          summary: `switch ${this.instanceId} ${plan.sourceHostId} → ${this.targetHostId}`,
        },
        [{ migrationId: this.migrationId, instanceId: this.instanceId, sourceHostId: plan.sourceHostId }],
      ),
    );
  }

  /** syncing → verifying → releasing → committing: forward only, retried until done. */
  private async completeAfterSwitch(
    plan: MigrationPlan,
    switched: SwitchResult,
  ): Promise<LiveMigrationResult> {
    const source = hostActivities(plan.sourceHostId);
    try {
      this.syncStartedAt = Date.now();
      this.copyActive = true;
      this.enterPhase('syncing', this.syncingDetails());
      for (const sync of this.volumes) await this.syncVolume(sync);

      this.enterPhase(
        'verifying',
        this.withCancelNote(
          `**verifying** ${this.instanceId} on ${this.targetHostId}: hashing ${this.progress.blocksTotal} blocks against ${plan.sourceHostId}`,
        ),
      );
      for (const sync of this.volumes) await this.verifyVolume(sync);
      this.copyActive = false;
      await this.target.finalizeTarget.executeWithOptions(
        { summary: `finalize replicas of ${this.instanceId} on ${this.targetHostId}` },
        [{ migrationId: this.migrationId, instanceId: this.instanceId }],
      );

      this.enterPhase(
        'releasing',
        this.withCancelNote(
          `**releasing** ${this.instanceId} and its volumes on the source ${plan.sourceHostId}`,
        ),
      );
      this.sourceReleased = await this.releaseSource(source, plan);

      this.enterPhase(
        'committing',
        this.withCancelNote(`**committing** ${this.instanceId} on ${this.targetHostId} to the inventory`),
      );
      await this.control.commitMigration.executeWithOptions(
        { summary: `commit ${this.instanceId} → ${this.targetHostId}` },
        [
          {
            key: this.migrationId,
            instanceId: this.instanceId,
            sourceHostId: plan.sourceHostId,
            targetHostId: this.targetHostId,
          },
        ],
      );
      if (this.snapshot && !this.request.keepSnapshot) {
        for (const { snapshotId } of this.snapshot.snapshots) {
          await this.control.deleteSnapshot.executeWithOptions({ summary: `delete ${snapshotId}` }, [
            { account: plan.account, snapshotId },
          ]);
        }
      }
    } catch (err) {
      const kept = this.snapshotNote();
      const message = `after the switch: ${this.instanceId} runs on ${this.targetHostId}; source ${plan.sourceHostId} kept for inspection: ${errorMessage(err)}${kept}`;
      log.error(`migration failed ${message}`);
      this.enterPhase('failed', `**failed** ${message}`);
      // The operator's way back to the data is the snapshot: the failure itself must name it.
      const surfaced = surfaceFailure(err);
      if (kept && surfaced instanceof ApplicationFailure) {
        throw ApplicationFailure.create({
          type: surfaced.type ?? undefined,
          message: `${surfaced.message}${kept}`,
          nonRetryable: true,
          details: surfaced.details ?? undefined,
        });
      }
      throw err;
    }

    // Let a bandwidth update that is still talking to the target finish before the workflow closes.
    await condition(allHandlersFinished);
    const durationMs = Date.now() - this.startedAt;
    this.enterPhase(
      'completed',
      this.withCancelNote(
        `**completed** ${this.instanceId} ${plan.sourceHostId} → ${this.targetHostId}: ${formatBytes(this.progress.bytesCopied)} copied, downtime ${formatDuration(switched.downtimeMs)}, took ${formatDuration(durationMs)}` +
          (this.sourceReleased
            ? ''
            : ` · source ${plan.sourceHostId} never answered its release: its stale copy of ${this.instanceId} (volumes ${plan.volumes.map((v) => v.volumeId).join(', ')}) is left there, delete it if the host returns`),
      ),
    );
    return this.result(plan, switched, durationMs);
  }

  /** Releases the source; false if its agent did not answer for SOURCE_RELEASE_GIVE_UP. */
  private async releaseSource(
    source: ReturnType<typeof hostActivities>,
    plan: MigrationPlan,
  ): Promise<boolean> {
    try {
      await source.releaseSource.executeWithOptions(
        {
          summary: `release ${this.instanceId} on ${plan.sourceHostId}`,
          scheduleToCloseTimeout: SOURCE_RELEASE_GIVE_UP,
        },
        [{ migrationId: this.migrationId, instanceId: this.instanceId }],
      );
      return true;
    } catch (err) {
      // Out of time: retries ran into the bound (retry state TIMEOUT), or no attempt ever started.
      const gaveUp =
        err instanceof ActivityFailure &&
        (err.retryState === 'TIMEOUT' || err.cause instanceof TimeoutFailure);
      if (!gaveUp) throw err;
      log.error(
        `source ${plan.sourceHostId} did not answer the release of ${this.instanceId} for ${SOURCE_RELEASE_GIVE_UP}: committing without it`,
      );
      return false;
    }
  }

  private async syncVolume(sync: VolumeSync): Promise<void> {
    const { volumeId } = sync.volume;
    const sourceHostId = this.plan!.sourceHostId;
    for (;;) {
      const slice = await this.target.syncVolumeSlice.executeWithOptions(
        { ...SYNC_SLICE_OPTIONS, summary: `sync ${volumeId} ${sourceHostId} → ${this.targetHostId}` },
        [
          {
            migrationId: this.migrationId,
            volumeId,
            sourceHostId,
            bandwidthBytesPerSec: this.bandwidth,
            maxSliceMs: MAX_SLICE_MS,
          },
        ],
      );
      this.recordSlice(sync, slice);
      if (slice.done) return;
    }
  }

  private async verifyVolume(sync: VolumeSync): Promise<void> {
    const { volumeId } = sync.volume;
    const sourceHostId = this.plan!.sourceHostId;
    for (let round = 1; ; round += 1) {
      const verified = await this.target.verifyVolume.executeWithOptions(
        {
          startToCloseTimeout: '10 minutes',
          heartbeatTimeout: '30s',
          summary: `verify ${volumeId} against ${sourceHostId}`,
        },
        [{ migrationId: this.migrationId, volumeId, sourceHostId }],
      );
      sync.blocksVerified = verified.blocksVerified;
      sync.blocksWrittenOnTarget = verified.blocksWrittenOnTarget;
      const mismatched = verified.mismatchedBlocks;
      if (mismatched.length === 0) return;
      if (round >= MAX_VERIFY_ROUNDS) {
        throw dataIntegrity(
          `volume ${volumeId} of ${this.instanceId} on ${this.targetHostId} still differs from the source ${sourceHostId} after ${round} verify rounds in blocks ${formatList(mismatched)}; the source copy is kept, inspect both hosts before retrying`,
        );
      }
      log.warn(
        `volume ${volumeId}: ${mismatched.length} block(s) differ from the source, copying them again`,
        {
          blocks: mismatched.slice(0, 64),
          round,
        },
      );
      this.enterPhase('syncing', this.syncingDetails());
      await this.syncVolume(sync);
      this.enterPhase(
        'verifying',
        this.withCancelNote(`**verifying** ${volumeId} on ${this.targetHostId} again (round ${round + 1})`),
      );
    }
  }

  /** Runs a step that can be undone; on cancel or failure undoes everything attempted so far and rethrows. */
  private async undoable<T>(step: () => Promise<T>): Promise<T> {
    try {
      return await step();
    } catch (err) {
      await this.rollBack(err);
      throw err;
    }
  }

  private async rollBack(cause: unknown): Promise<void> {
    const cancelled = isCancellation(cause);
    const sourceHostId = this.plan?.sourceHostId;
    const why = cancelled ? 'cancelled' : `failed: ${errorMessage(cause)}`;
    log.warn(`migration of ${this.instanceId} to ${this.targetHostId} ${why}; rolling back`);
    this.enterPhase('rolling-back', `**rolling back** ${this.instanceId} → ${this.targetHostId} (${why})`);
    await CancellationScope.nonCancellable(async () => {
      if (this.switchAttempted && sourceHostId !== undefined) {
        try {
          await hostActivities(
            sourceHostId,
            this.snapshot ? SOURCE_LOST_AFTER : {},
          ).resumeInstance.executeWithOptions({ summary: `resume ${this.instanceId} on ${sourceHostId}` }, [
            { instanceId: this.instanceId },
          ]);
        } catch (err) {
          if (!this.snapshot) throw err;
          this.sourceLost = true;
          log.error(`source ${sourceHostId} did not take ${this.instanceId} back: ${errorMessage(err)}`);
        }
      }
      if (this.prepareAttempted) {
        await this.target.discardTarget.executeWithOptions(
          { summary: `discard replicas of ${this.instanceId} on ${this.targetHostId}` },
          [{ migrationId: this.migrationId, instanceId: this.instanceId }],
        );
      }
      if (this.reserveAttempted) {
        await this.control.releaseReservation.executeWithOptions(
          { summary: `release reservation on ${this.targetHostId}` },
          [{ key: this.migrationId }],
        );
      }
    });
    const untouched = !sourceHostId
      ? ''
      : this.sourceLost
        ? `; ${sourceHostId} did not take ${this.instanceId} back`
        : `; ${this.instanceId} still runs on ${sourceHostId}`;
    this.enterPhase(
      cancelled ? 'rolled-back' : 'failed',
      `**${cancelled ? 'rolled back' : 'failed'}** ${this.instanceId} → ${this.targetHostId} (${why})${untouched}`,
    );
  }

  private async setBandwidth(bytesPerSec: number): Promise<number> {
    this.bandwidth = bytesPerSec;
    this.progress.bandwidthBytesPerSec = bytesPerSec;
    log.info(`bandwidth of migration ${this.migrationId} set to ${bytesPerSec} bytes/s`);
    if (this.copyActive) {
      try {
        // The root scope may already carry a (refused) cancel; this call must still go out.
        await CancellationScope.nonCancellable(() =>
          this.target.setSyncBandwidth.executeWithOptions(
            {
              startToCloseTimeout: '30s',
              retry: { ...RETRY, maximumAttempts: 3 },
              summary: `bandwidth ${bytesPerSec} B/s`,
            },
            [{ migrationId: this.migrationId, bytesPerSec }],
          ),
        );
      } catch (err) {
        // Not fatal: every following slice starts with the new limit anyway.
        log.warn(`could not change the running copy's bandwidth: ${errorMessage(err)}`);
      }
    }
    return bytesPerSec;
  }

  private acceptPlan(plan: MigrationPlan): void {
    assertId('plan.sourceHostId', plan.sourceHostId);
    for (const volume of plan.volumes) assertId('plan volume id', volume.volumeId);
    if (plan.instanceId !== this.instanceId || plan.targetHostId !== this.targetHostId) {
      throw invalidState(
        `the control plane planned ${plan.instanceId} → ${plan.targetHostId}, not the requested ${this.instanceId} → ${this.targetHostId}`,
      );
    }
    this.plan = plan;
    this.volumes = plan.volumes.map((volume) => ({
      volume,
      blocksDone: 0,
      blocksTotal: blockCountOf(volume),
      bytesReadThrough: 0,
      bytesRecopied: 0,
      blocksVerified: 0,
      blocksWrittenOnTarget: 0,
    }));
    this.progress.sourceHostId = plan.sourceHostId;
    this.progress.bytesTotal = plan.volumes.reduce((sum, v) => sum + v.sizeBytes, 0);
    this.updateBlockCounts();
    upsertVisibility({ account: plan.account });
  }

  private recordSlice(sync: VolumeSync, slice: SyncSliceResult): void {
    sync.blocksDone = slice.blocksDone;
    sync.blocksTotal = slice.blocksTotal;
    sync.bytesReadThrough = slice.bytesReadThrough;
    sync.bytesRecopied = slice.bytesRecopied ?? 0;
    this.progress.bytesCopied += slice.bytesCopied;
    this.updateBlockCounts();

    const elapsedSec = (Date.now() - (this.syncStartedAt ?? Date.now())) / 1000;
    const rate = elapsedSec > 0 ? this.progress.bytesCopied / elapsedSec : 0;
    const remainingBytes = this.volumes.reduce(
      (sum, v) => sum + Math.max(0, v.blocksTotal - v.blocksDone) * v.volume.blockSize,
      0,
    );
    this.progress.rateBytesPerSec = Math.round(rate);
    this.progress.etaSeconds = remainingBytes === 0 ? 0 : rate > 0 ? Math.ceil(remainingBytes / rate) : null;
    if (this.progress.phase === 'syncing') setCurrentDetails(this.syncingDetails());
  }

  private updateBlockCounts(): void {
    this.progress.blocksDone = this.volumes.reduce((sum, v) => sum + v.blocksDone, 0);
    this.progress.blocksTotal = this.volumes.reduce((sum, v) => sum + v.blocksTotal, 0);
  }

  /** What a failure after the switch says about the pre-migration snapshot, which it keeps. */
  private snapshotNote(): string {
    const snapshots = this.snapshot?.snapshots ?? [];
    if (snapshots.length === 0) return '';
    const ids = snapshots.map((s) => `${s.snapshotId} of ${s.volumeId} (as of workload seq ${s.atSeq})`);
    return `; the pre-migration snapshot is kept: ${ids.join(', ')}`;
  }

  private syncingDetails(): string {
    const p = this.progress;
    const eta = p.etaSeconds === null ? 'eta unknown' : `eta ${formatDuration(p.etaSeconds * 1000)}`;
    const limit = this.bandwidth > 0 ? ` (limit ${formatBytes(this.bandwidth)}/s)` : '';
    return this.withCancelNote(
      `**syncing** ${this.instanceId} ${p.sourceHostId} → ${this.targetHostId}: ${p.blocksDone}/${p.blocksTotal} blocks, ${formatBytes(p.rateBytesPerSec)}/s${limit}, ${eta}`,
    );
  }

  private withCancelNote(details: string): string {
    return this.progress.cancelRefused ? `${details} · cancel refused` : details;
  }

  private refuseCancel(): void {
    if (this.progress.cancelRefused) return;
    this.progress.cancelRefused = true;
    const message = `cancel refused: ${this.instanceId} already runs on ${this.targetHostId}; the sync will complete`;
    log.warn(message);
    setCurrentDetails(message);
  }

  private throwIfCancelled(): void {
    // A step whose activity finished despite a cancel request resolves normally; stop before the next step.
    if (CancellationScope.current().consideredCancelled) throw new CancelledFailure('migration cancelled');
  }

  private enterPhase(phase: MigrationPhase, details: string): void {
    const now = Date.now();
    const previous = this.progress.phase;
    this.phaseMs[previous] = (this.phaseMs[previous] ?? 0) + (now - this.phaseStartedAt);
    this.phaseStartedAt = now;
    this.progress.phase = phase;
    showPhase(phase, details);
  }

  private result(plan: MigrationPlan, switched: SwitchResult, durationMs: number): LiveMigrationResult {
    return {
      instanceId: this.instanceId,
      account: plan.account,
      sourceHostId: plan.sourceHostId,
      targetHostId: this.targetHostId,
      downtimeMs: switched.downtimeMs,
      bytesCopied: this.progress.bytesCopied,
      bytesReadThrough: this.volumes.reduce((sum, v) => sum + v.bytesReadThrough, 0),
      bytesRecopied: this.volumes.reduce((sum, v) => sum + v.bytesRecopied, 0),
      ...(this.sourceReleased ? {} : { sourceReleased: false }),
      blocksVerified: this.volumes.reduce((sum, v) => sum + v.blocksVerified, 0),
      blocksWrittenOnTarget: this.volumes.reduce((sum, v) => sum + v.blocksWrittenOnTarget, 0),
      durationMs,
      cancelRefused: this.progress.cancelRefused,
      phaseMs: { ...this.phaseMs },
      ...(this.snapshot && this.request.keepSnapshot
        ? { snapshotIds: this.snapshot.snapshots.map((s) => s.snapshotId) }
        : {}),
    };
  }
}
