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
import type { HostAgent } from '../fleet/host-agent';

/**
 * Activities served by one host's agent on that host's task queue. Each is idempotent: a retry
 * after a crash finds the work done (or half done, and resumes it) and never applies it twice.
 */
// STUB: signatures agreed; implementation owned by the data-plane work.
export function createHostActivities(agent: HostAgent) {
  const todo = (): never => {
    throw new Error(`not implemented on ${agent.hostId}`);
  };
  return {
    /** Create the instance's volumes (if missing) and start it. */
    async launchInstances(_launches: InstanceLaunch[]): Promise<LaunchResult[]> {
      return todo();
    },
    /** Target side: empty replica volumes that read through to the source, instance not yet running. */
    async prepareTarget(_input: PrepareTargetInput): Promise<void> {
      return todo();
    },
    /** Target side: pause the instance on the source (via the peer link), start it here. The only downtime. */
    async switchToTarget(_input: SwitchInput): Promise<SwitchResult> {
      return todo();
    },
    /** Source side: make sure the instance runs here again (compensation when a switch failed). */
    async resumeInstance(_input: InstanceRef): Promise<void> {
      return todo();
    },
    /** Target side: background copy of missing blocks for up to maxSliceMs, heartbeating its cursor. */
    async syncVolumeSlice(_input: SyncSliceInput): Promise<SyncSliceResult> {
      return todo();
    },
    /** Target side: change the rate limit of a running (or the next) sync slice of this migration. */
    async setSyncBandwidth(_input: { migrationId: string; bytesPerSec: number }): Promise<void> {
      return todo();
    },
    /** Target side: hash-compare every block copied from the source (blocks written here since the switch are skipped). */
    async verifyVolume(_input: VerifyInput): Promise<VerifyResult> {
      return todo();
    },
    /** Target side: the replicas are complete; drop the sync maps and the link to the source. */
    async finalizeTarget(_input: MigrationRef): Promise<void> {
      return todo();
    },
    /** Target side rollback before the switch: delete replica volumes and any trace of the instance. */
    async discardTarget(_input: MigrationRef): Promise<void> {
      return todo();
    },
    /** Source side after a completed sync: stop the instance and delete its volumes. */
    async releaseSource(_input: MigrationRef): Promise<void> {
      return todo();
    },
    async importVolume(_input: ImportVolumeInput): Promise<VolumeImportResult> {
      return todo();
    },
    async exportVolume(_input: VolumeExportInput): Promise<VolumeExportResult> {
      return todo();
    },
  };
}

export type HostActivities = ReturnType<typeof createHostActivities>;
