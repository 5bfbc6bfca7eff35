import { CancellationScope, log, proxyActivities, setHandler, workflowInfo } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';
import {
  assertId,
  assertObject,
  BOUNDED,
  CONTROL_ACTIVITY_OPTIONS,
  errorMessage,
  formatBytes,
  hostActivityOptions,
  invalidInput,
  LONG_HOST_ACTIVITY,
  Operation,
  reportFailure,
  restoreProgressQuery,
  RETRY,
  showPhase,
  upsertVisibility,
  type RestoreInstanceInput,
  type RestoreInstanceResult,
  type RestorePhase,
  type RestorePlan,
  type RestoreProgress,
} from '../contracts';

const MAX_SNAPSHOT_IDS = 64;

/**
 * Starts an instance on another host from snapshots of its volumes (one per volume), for its owning
 * account only. The previous copy is stopped and removed where its host still answers, so two never
 * run; a host that does not answer is the case restores exist for, and the result says so.
 * Before that release everything is undone on failure; after it the restore only goes forward.
 */
export async function restoreInstance(input: RestoreInstanceInput): Promise<RestoreInstanceResult> {
  const request = validateRestoreInput(input);
  const restoreId = assertId('workflow id (the restore id)', workflowInfo().workflowId);
  upsertVisibility({ operation: Operation.restoreInstance, account: request.account });
  const progress: RestoreProgress = {
    phase: 'validating',
    instanceId: '',
    hostId: request.targetHostId ?? '',
    volumesDone: 0,
    volumesTotal: 0,
    bytesRestored: 0,
  };
  setHandler(restoreProgressQuery, () => ({ ...progress }));
  const phase = (name: RestorePhase, details: string) => {
    progress.phase = name;
    showPhase(name, details);
  };

  return await reportFailure(`restore from ${request.snapshotIds.join(', ')}`, async () => {
    phase(
      'validating',
      `**validating** restore from ${request.snapshotIds.join(', ')} for ${request.account}`,
    );
    const control = proxyActivities<ControlActivities>(CONTROL_ACTIVITY_OPTIONS);
    const bounded = proxyActivities<ControlActivities>({ ...CONTROL_ACTIVITY_OPTIONS, ...BOUNDED });
    const plan = await bounded.planRestore.executeWithOptions({ summary: 'plan the restore' }, [request]);
    progress.instanceId = plan.instanceId;
    progress.hostId = plan.hostId;
    progress.volumesTotal = plan.volumes.length;
    upsertVisibility({ instanceId: plan.instanceId, hostId: plan.hostId });

    const undo = async (err: unknown) => {
      log.warn(`restore of ${plan.instanceId} rolls back: ${errorMessage(err)}`);
      await CancellationScope.nonCancellable(async () => {
        await proxyActivities<HostActivities>(hostActivityOptions(plan.hostId)).discardRestored({
          restoreId,
          instanceId: plan.instanceId,
          volumeIds: plan.volumes.map((v) => v.volumeId),
        });
        await control.releaseReservation({ key: restoreId });
      });
    };

    try {
      phase('reserving', `**reserving** room for ${plan.instanceId} on ${plan.hostId}`);
      await bounded.reserveCapacity.executeWithOptions(
        { summary: `reserve ${plan.hostId} for ${plan.instanceId}` },
        [{ key: restoreId, hostId: plan.hostId, instanceId: plan.instanceId, resources: plan.resources }],
      );
      await restoreVolumes(plan, restoreId, progress, phase);
    } catch (err) {
      await undo(err);
      throw err;
    }

    // From here on the previous copy may be gone: only forward.
    return await CancellationScope.nonCancellable(async () => {
      phase('releasing', `**releasing** the previous copy of ${plan.instanceId} on ${plan.fromHostId}`);
      const previousReleased = await releasePrevious(plan, restoreId);

      phase('starting', `**starting** ${plan.instanceId} on ${plan.hostId} from its snapshots`);
      const host = proxyActivities<HostActivities>(hostActivityOptions(plan.hostId));
      await host.startRestored.executeWithOptions({ summary: `start ${plan.instanceId} on ${plan.hostId}` }, [
        {
          restoreId,
          instanceId: plan.instanceId,
          account: plan.account,
          volumes: plan.volumes,
          workload: plan.workload,
        },
      ]);

      phase('committing', `**committing** ${plan.instanceId} on ${plan.hostId} to the inventory`);
      await control.commitMigration.executeWithOptions(
        { summary: `commit ${plan.instanceId} → ${plan.hostId}` },
        [
          {
            key: restoreId,
            instanceId: plan.instanceId,
            sourceHostId: plan.fromHostId,
            targetHostId: plan.hostId,
          },
        ],
      );
      const left = previousReleased ? '' : `; ${plan.fromHostId} did not answer, its copy is left there`;
      phase(
        'completed',
        `**completed** ${plan.instanceId} runs on ${plan.hostId} from ${plan.volumes.map((v) => v.snapshotId).join(', ')} (${formatBytes(progress.bytesRestored)})${left}`,
      );
      return {
        instanceId: plan.instanceId,
        account: plan.account,
        fromHostId: plan.fromHostId,
        hostId: plan.hostId,
        snapshotIds: plan.volumes.map((v) => v.snapshotId),
        bytesRestored: progress.bytesRestored,
        previousReleased,
      };
    });
  });
}

async function restoreVolumes(
  plan: RestorePlan,
  restoreId: string,
  progress: RestoreProgress,
  phase: (name: RestorePhase, details: string) => void,
): Promise<void> {
  const host = proxyActivities<HostActivities>({
    ...hostActivityOptions(plan.hostId),
    ...LONG_HOST_ACTIVITY,
    retry: { ...RETRY, maximumAttempts: 5 },
  });
  for (const volume of plan.volumes) {
    phase(
      'restoring',
      `**restoring** ${volume.volumeId} of ${plan.instanceId} on ${plan.hostId} from ${volume.snapshotId} (${progress.volumesDone + 1}/${progress.volumesTotal}, ${formatBytes(volume.sizeBytes)})`,
    );
    const restored = await host.restoreVolume.executeWithOptions(
      { summary: `restore ${volume.volumeId} from ${volume.snapshotId}` },
      [
        {
          restoreId,
          account: plan.account,
          snapshotId: volume.snapshotId,
          instanceId: plan.instanceId,
          volumeId: volume.volumeId,
        },
      ],
    );
    progress.volumesDone += 1;
    progress.bytesRestored += restored.bytesRestored;
  }
}

/**
 * Stops and removes the previous copy; false when its host does not answer within 20 seconds. The
 * restored copy is already running, so the result says what was left behind rather than waiting.
 */
async function releasePrevious(plan: RestorePlan, restoreId: string): Promise<boolean> {
  const previous = proxyActivities<HostActivities>({
    ...hostActivityOptions(plan.fromHostId),
    scheduleToCloseTimeout: '20s',
    startToCloseTimeout: '10s',
    retry: { ...RETRY, maximumAttempts: 3 },
  });
  try {
    await previous.dropInstance.executeWithOptions(
      { summary: `remove ${plan.instanceId} from ${plan.fromHostId}` },
      [{ instanceId: plan.instanceId, reason: `restored on ${plan.hostId} by ${restoreId}` }],
    );
    return true;
  } catch (err) {
    log.warn(`host ${plan.fromHostId} did not release ${plan.instanceId}: ${errorMessage(err)}`);
    return false;
  }
}

function validateRestoreInput(input: unknown): RestoreInstanceInput {
  const fields = assertObject('restore input', input);
  const account = assertId('account', fields.account);
  const ids = fields.snapshotIds;
  if (!Array.isArray(ids) || ids.length === 0 || ids.length > MAX_SNAPSHOT_IDS) {
    throw invalidInput(
      `snapshotIds must list 1 to ${MAX_SNAPSHOT_IDS} snapshot ids, one per volume to restore`,
    );
  }
  const snapshotIds = ids.map((id, n) => assertId(`snapshotIds[${n}]`, id));
  const optionalId = (name: string, value: unknown) =>
    value === undefined || value === null ? undefined : assertId(name, value);
  const avoid = fields.avoidHostIds ?? [];
  if (!Array.isArray(avoid)) throw invalidInput('avoidHostIds must be a list of host ids');
  const reason = fields.reason === undefined ? 'manual' : fields.reason;
  if (typeof reason !== 'string' || reason.length > 200) {
    throw invalidInput('reason must be a string of up to 200 characters');
  }
  return {
    account,
    snapshotIds,
    targetHostId: optionalId('targetHostId', fields.targetHostId),
    avoidHostIds: avoid.map((id, n) => assertId(`avoidHostIds[${n}]`, id)),
    reason,
  };
}
