import { proxyActivities } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';
import {
  assertAbsolutePath,
  assertId,
  assertObject,
  CONTROL_ACTIVITY_OPTIONS,
  formatBytes,
  hostActivityOptions,
  LONG_HOST_ACTIVITY,
  Operation,
  reportFailure,
  showPhase,
  upsertVisibility,
  type VolumeExportInput,
  type VolumeExportResult,
} from '../contracts';

/** Writes a volume's raw image to a path on the worker's machine, checked by hash. */
export async function volumeExport(input: VolumeExportInput): Promise<VolumeExportResult> {
  const fields = assertObject('volume export input', input);
  const volumeId = assertId('volumeId', fields.volumeId);
  const path = assertAbsolutePath('path', fields.path);
  upsertVisibility({ operation: Operation.volumeExport });
  return await reportFailure('volume export', async () => {
    showPhase('locating', `**locating** volume ${volumeId}`);
    const control = proxyActivities<ControlActivities>(CONTROL_ACTIVITY_OPTIONS);
    const volume = await control.describeVolume.executeWithOptions({ summary: `describe ${volumeId}` }, [
      { volumeId },
    ]);
    const hostId = assertId('volume.hostId', volume.hostId);
    upsertVisibility({ instanceId: assertId('volume.instanceId', volume.instanceId), hostId });

    showPhase(
      'exporting',
      `**exporting** ${volumeId} (${formatBytes(volume.sizeBytes)}) from ${hostId} to ${path}`,
    );
    const host = proxyActivities<HostActivities>(hostActivityOptions(hostId));
    const result = await host.exportVolume.executeWithOptions(
      { ...LONG_HOST_ACTIVITY, summary: `export ${volumeId} from ${hostId}` },
      [{ volumeId, path }],
    );
    showPhase(
      'completed',
      `**completed** ${volumeId} → ${path}: ${formatBytes(result.sizeBytes)}, sha256 ${result.sha256.slice(0, 12)}…`,
    );
    return result;
  });
}
