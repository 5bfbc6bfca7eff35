import { CancellationScope, proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';
import {
  assertAbsolutePath,
  assertId,
  assertObject,
  assertOptionalBoolean,
  CONTROL_ACTIVITY_OPTIONS,
  formatBytes,
  hostActivityOptions,
  LONG_HOST_ACTIVITY,
  Operation,
  reportFailure,
  showPhase,
  upsertVisibility,
  type VolumeImportInput,
  type VolumeImportResult,
} from '../contracts';

/** Brings a raw disk image (e.g. a filesystem the user built) into the fleet as a volume of an instance. */
export async function volumeImport(input: VolumeImportInput): Promise<VolumeImportResult> {
  const fields = assertObject('volume import input', input);
  const instanceId = assertId('instanceId', fields.instanceId);
  const path = assertAbsolutePath('path', fields.path);
  const workloadWrites = assertOptionalBoolean('workloadWrites', fields.workloadWrites) ?? false;
  const key = assertId('workflow id (the reservation key)', workflowInfo().workflowId);
  upsertVisibility({ operation: Operation.volumeImport, instanceId });
  const control = proxyActivities<ControlActivities>(CONTROL_ACTIVITY_OPTIONS);
  let reserved = false;
  return await reportFailure('volume import', async () => {
    try {
      return await importImage();
    } catch (err) {
      // The plan reserves the image's disk room; whatever went wrong after it, give the room back.
      if (reserved) {
        await CancellationScope.nonCancellable(() =>
          control.releaseReservation.executeWithOptions({ summary: `release ${key}` }, [{ key }]),
        );
      }
      throw err;
    }
  });

  async function importImage(): Promise<VolumeImportResult> {
    showPhase('planning', `**planning** import of ${path} for ${instanceId}`);
    reserved = true;
    const plan = await control.planVolumeImport.executeWithOptions(
      { summary: `plan import for ${instanceId}` },
      [{ key, instanceId, path, workloadWrites }],
    );
    const hostId = assertId('plan.hostId', plan.hostId);
    assertId('plan.volumeId', plan.volumeId);
    upsertVisibility({ hostId });

    showPhase(
      'importing',
      `**importing** ${path} as ${plan.volumeId} (${formatBytes(plan.sizeBytes)}) of ${instanceId} on ${hostId}`,
    );
    const host = proxyActivities<HostActivities>(hostActivityOptions(hostId));
    const result = await host.importVolume.executeWithOptions(
      { ...LONG_HOST_ACTIVITY, summary: `import ${plan.volumeId} on ${hostId}` },
      [
        {
          volumeId: plan.volumeId,
          instanceId: plan.instanceId,
          path,
          sizeBytes: plan.sizeBytes,
          blockSize: plan.blockSize,
          userData: plan.userData,
        },
      ],
    );

    showPhase('committing', `**committing** ${plan.volumeId} of ${instanceId} to the inventory`);
    await control.commitVolume.executeWithOptions({ summary: `commit ${plan.volumeId}` }, [{ ...plan, key }]);
    showPhase(
      'completed',
      `**completed** ${plan.volumeId} of ${instanceId} on ${hostId}: ${formatBytes(result.sizeBytes)}, sha256 ${result.sha256.slice(0, 12)}…`,
    );
    return result;
  }
}
