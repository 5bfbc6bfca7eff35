import { isCancellation } from '@temporalio/workflow';
import {
  assertId,
  Operation,
  type VolumeExportInput,
  type VolumeExportResult,
  type VolumeImportInput,
  type VolumeImportResult,
} from '../contracts';
import { controlActivities, hostActivities } from './activity-proxies';
import { surfaceFailure } from './failures';
import { formatBytes } from './format';
import { assertAbsolutePath, assertObject, assertOptionalBoolean } from './validation';
import { showPhase, upsertVisibility } from './visibility';

/** Copying a whole image in or out is one activity: big images take minutes, and it heartbeats meanwhile. */
const TRANSFER_OPTIONS = { startToCloseTimeout: '30 minutes', heartbeatTimeout: '30s' } as const;

/** Brings a raw disk image (e.g. a filesystem the user built) into the fleet as a volume of an instance. */
export async function volumeImport(input: VolumeImportInput): Promise<VolumeImportResult> {
  const fields = assertObject('volume import input', input);
  const instanceId = assertId('instanceId', fields.instanceId);
  const path = assertAbsolutePath('path', fields.path);
  const workloadWrites = assertOptionalBoolean('workloadWrites', fields.workloadWrites) ?? false;
  upsertVisibility({ operation: Operation.volumeImport, instanceId });
  return await reportFailure('volume import', async () => {
    const control = controlActivities();
    showPhase('planning', `**planning** import of ${path} for ${instanceId}`);
    const plan = await control.planVolumeImport.executeWithOptions(
      { summary: `plan import for ${instanceId}` },
      [{ instanceId, path, workloadWrites }],
    );
    const hostId = assertId('plan.hostId', plan.hostId);
    assertId('plan.volumeId', plan.volumeId);
    upsertVisibility({ hostId });

    showPhase(
      'importing',
      `**importing** ${path} as ${plan.volumeId} (${formatBytes(plan.sizeBytes)}) of ${instanceId} on ${hostId}`,
    );
    const result = await hostActivities(hostId).importVolume.executeWithOptions(
      { ...TRANSFER_OPTIONS, summary: `import ${plan.volumeId} on ${hostId}` },
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
    await control.commitVolume.executeWithOptions({ summary: `commit ${plan.volumeId}` }, [plan]);
    showPhase(
      'completed',
      `**completed** ${plan.volumeId} of ${instanceId} on ${hostId}: ${formatBytes(result.sizeBytes)}, sha256 ${result.sha256.slice(0, 12)}…`,
    );
    return result;
  });
}

/** Writes a volume's raw image to a path on the worker's machine, checked by hash. */
export async function volumeExport(input: VolumeExportInput): Promise<VolumeExportResult> {
  const fields = assertObject('volume export input', input);
  const volumeId = assertId('volumeId', fields.volumeId);
  const path = assertAbsolutePath('path', fields.path);
  upsertVisibility({ operation: Operation.volumeExport });
  return await reportFailure('volume export', async () => {
    showPhase('locating', `**locating** volume ${volumeId}`);
    const volume = await controlActivities().describeVolume.executeWithOptions(
      { summary: `describe ${volumeId}` },
      [{ volumeId }],
    );
    const hostId = assertId('volume.hostId', volume.hostId);
    upsertVisibility({ instanceId: assertId('volume.instanceId', volume.instanceId), hostId });

    showPhase(
      'exporting',
      `**exporting** ${volumeId} (${formatBytes(volume.sizeBytes)}) from ${hostId} to ${path}`,
    );
    const result = await hostActivities(hostId).exportVolume.executeWithOptions(
      { ...TRANSFER_OPTIONS, summary: `export ${volumeId} from ${hostId}` },
      [{ volumeId, path }],
    );
    showPhase(
      'completed',
      `**completed** ${volumeId} → ${path}: ${formatBytes(result.sizeBytes)}, sha256 ${result.sha256.slice(0, 12)}…`,
    );
    return result;
  });
}

async function reportFailure<T>(what: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    const surfaced = surfaceFailure(err);
    const why = isCancellation(err) ? 'cancelled' : 'failed';
    showPhase(why, `**${why}** ${what}: ${surfaced instanceof Error ? surfaced.message : String(surfaced)}`);
    throw surfaced;
  }
}
