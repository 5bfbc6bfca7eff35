import {
  patched,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';
import {
  assertId,
  assertObject,
  CONTROL_ACTIVITY_OPTIONS,
  DEFAULT_SNAPSHOTS_KEPT_PER_VOLUME,
  formatBytes,
  formatDuration,
  hostActivityOptions,
  invalidInput,
  LOCAL_CONTROL_ACTIVITY_OPTIONS,
  LONG_HOST_ACTIVITY,
  Operation,
  reportFailure,
  showPhase,
  snapshotProgressQuery,
  upsertVisibility,
  type PreMigrationSnapshotInput,
  type PreMigrationSnapshotResult,
  type SnapshotPhase,
  type SnapshotProgress,
  type VolumeSnapshot,
} from '../contracts';

const EVENT = /^[A-Za-z0-9][A-Za-z0-9:._/-]{0,199}$/;
const MAX_KEEP = 1000;
/**
 * Plans inside the workflow task (a local activity) and retains only when the plan counted enough
 * snapshots for this one to retire some: two server round trips fewer for the operator to wait on.
 */
const PLAN_LOCALLY = 'snapshot-plan-local-retain-when-due';

/**
 * Snapshots an instance's instance-store volumes into its account's snapshot store before an event
 * that could lose them (a migration, maintenance). Each volume is captured at one instant while the
 * instance keeps running; older snapshots beyond `keepLast` per volume are retired afterwards.
 */
export async function preMigrationSnapshot(
  input: PreMigrationSnapshotInput,
): Promise<PreMigrationSnapshotResult> {
  const request = validateSnapshotInput(input);
  upsertVisibility({ operation: Operation.preMigrationSnapshot, instanceId: request.instanceId });
  const progress: SnapshotProgress = {
    phase: 'validating',
    instanceId: request.instanceId,
    volumesDone: 0,
    volumesTotal: 0,
    bytesUploaded: 0,
  };
  setHandler(snapshotProgressQuery, () => ({ ...progress }));
  const phase = (name: SnapshotPhase, details: string) => {
    progress.phase = name;
    showPhase(name, details);
  };

  return await reportFailure(`snapshot of ${request.instanceId}`, async () => {
    phase('validating', `**validating** snapshot of ${request.instanceId} before ${request.event}`);
    const control = proxyActivities<ControlActivities>(CONTROL_ACTIVITY_OPTIONS);
    const planLocally = patched(PLAN_LOCALLY);
    const planner = planLocally
      ? proxyLocalActivities<ControlActivities>(LOCAL_CONTROL_ACTIVITY_OPTIONS).planSnapshot
      : control.planSnapshot;
    const plan = await planner.executeWithOptions({ summary: `plan snapshot of ${request.instanceId}` }, [
      { instanceId: request.instanceId, account: request.account },
    ]);
    upsertVisibility({ hostId: plan.hostId, account: plan.account });
    const result: PreMigrationSnapshotResult = {
      instanceId: plan.instanceId,
      account: plan.account,
      hostId: plan.hostId,
      snapshots: [],
      retired: [],
    };
    if (plan.volumes.length === 0) {
      result.skipped = `instance ${plan.instanceId} has no instance-store volumes: nothing to snapshot`;
      phase('completed', `**completed** ${result.skipped}`);
      return result;
    }

    progress.volumesTotal = plan.volumes.length;
    const host = proxyActivities<HostActivities>({
      ...hostActivityOptions(plan.hostId),
      ...LONG_HOST_ACTIVITY,
    });
    const createdAt = new Date(workflowInfo().startTime).toISOString();
    for (const volume of plan.volumes) {
      phase(
        'snapshotting',
        `**snapshotting** ${volume.volumeId} of ${plan.instanceId} on ${plan.hostId} (${progress.volumesDone + 1}/${progress.volumesTotal}, ${formatBytes(volume.sizeBytes)})`,
      );
      const snapshot: VolumeSnapshot = await host.snapshotVolume.executeWithOptions(
        { summary: `snapshot ${volume.volumeId} on ${plan.hostId}` },
        [
          {
            // Fixed before the call, so every attempt writes (and dedupes into) the same snapshot.
            snapshotId: `snap-${uuid4().slice(0, 13).replace('-', '')}`,
            account: plan.account,
            instanceId: plan.instanceId,
            volumeId: volume.volumeId,
            event: request.event,
            createdAt,
          },
        ],
      );
      result.snapshots.push(snapshot);
      progress.volumesDone += 1;
      progress.bytesUploaded += snapshot.bytesUploaded;
    }

    phase(
      'retaining',
      `**retaining** the newest ${request.keepLast} snapshots of each volume of ${plan.instanceId}`,
    );
    for (const volume of plan.volumes) {
      // Two snapshots of a volume taken at once may both skip: the next one's retention catches up.
      const due = !planLocally || (volume.snapshotsHeld ?? Infinity) + 1 > request.keepLast;
      if (!due) continue;
      const retained = await control.retainSnapshots.executeWithOptions(
        { summary: `retain ${request.keepLast} snapshots of ${volume.volumeId}` },
        [{ account: plan.account, volumeId: volume.volumeId, keepLast: request.keepLast }],
      );
      result.retired.push(...retained.deleted);
    }

    const ids = result.snapshots.map((s) => s.snapshotId).join(', ');
    const slowest = Math.max(...result.snapshots.map((s) => s.pausedMs));
    phase(
      'completed',
      `**completed** ${ids} of ${plan.instanceId}: ${formatBytes(progress.bytesUploaded)} uploaded, paused at most ${formatDuration(slowest)}`,
    );
    return result;
  });
}

function validateSnapshotInput(input: unknown) {
  const fields = assertObject('snapshot input', input);
  const instanceId = assertId('instanceId', fields.instanceId);
  const event = fields.event === undefined ? 'manual' : fields.event;
  if (typeof event !== 'string' || !EVENT.test(event)) {
    throw invalidInput(
      `event ${JSON.stringify(event)} must be letters, digits and ':._/-' (up to 200), e.g. "migration:<workflowId>" or "manual"`,
    );
  }
  const account =
    fields.account === undefined || fields.account === null ? undefined : assertId('account', fields.account);
  const keepLast = fields.keepLast ?? DEFAULT_SNAPSHOTS_KEPT_PER_VOLUME;
  if (!Number.isSafeInteger(keepLast) || (keepLast as number) < 1 || (keepLast as number) > MAX_KEEP) {
    throw invalidInput(
      `keepLast ${String(keepLast)} must be a whole number from 1 to ${MAX_KEEP} (snapshots kept per volume)`,
    );
  }
  return { instanceId, event, account, keepLast: keepLast as number };
}
