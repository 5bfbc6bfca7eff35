import { proxyActivities } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import {
  assertId,
  assertObject,
  CONTROL_ACTIVITY_OPTIONS,
  formatBytes,
  Operation,
  reportFailure,
  showPhase,
  upsertVisibility,
  type DeleteSnapshotInput,
  type SnapshotDeleteResult,
} from '../contracts';

/** Deletes a snapshot of the account (only the owner may) and the stored chunks nothing else uses. */
export async function deleteSnapshot(input: DeleteSnapshotInput): Promise<SnapshotDeleteResult> {
  const fields = assertObject('delete snapshot input', input);
  const account = assertId('account', fields.account);
  const snapshotId = assertId('snapshotId', fields.snapshotId);
  upsertVisibility({ operation: Operation.deleteSnapshot, account });
  return await reportFailure(`delete ${snapshotId}`, async () => {
    const control = proxyActivities<ControlActivities>(CONTROL_ACTIVITY_OPTIONS);
    showPhase('validating', `**validating** deletion of ${snapshotId} for ${account}`);
    const snapshot = await control.describeSnapshot.executeWithOptions(
      { summary: `describe ${snapshotId}` },
      [{ account, snapshotId }],
    );
    upsertVisibility({ instanceId: snapshot.instanceId });
    showPhase('deleting', `**deleting** ${snapshotId} of ${snapshot.volumeId} (${snapshot.instanceId})`);
    const result = await control.deleteSnapshot.executeWithOptions({ summary: `delete ${snapshotId}` }, [
      { account, snapshotId },
    ]);
    showPhase(
      'completed',
      `**completed** ${snapshotId} deleted; ${formatBytes(result.gc.bytesFreed)} of unreferenced chunks freed`,
    );
    return result;
  });
}
