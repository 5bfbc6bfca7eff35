import { defineQuery } from '@temporalio/workflow';
import type { Resources, VolumeRecord, WorkloadConfig } from './fleet';
import type { SnapshotInfo } from './snapshot';

/** Workflow, activity and CLI shapes of pre-migration snapshots and restores. */

export interface PreMigrationSnapshotInput {
  instanceId: string;
  /** The event the snapshot protects against: 'migration:<workflowId>', 'maintenance:<id>' or 'manual'. */
  event: string;
  /** The caller's account; when given it must own the instance (the CLI always sends it). */
  account?: string;
  /** Snapshots kept per volume, this one included (older ones are deleted); default 3. */
  keepLast?: number;
}

export interface VolumeSnapshot extends SnapshotInfo {
  /** The workload's last write (log seq) contained in the snapshot: its point in time. */
  atSeq: number;
  /** How long the instance paused for the snapshot's instant. */
  pausedMs: number;
}

export interface PreMigrationSnapshotResult {
  instanceId: string;
  account: string;
  hostId: string;
  /** One per instance-store volume; empty when the instance has none. */
  snapshots: VolumeSnapshot[];
  /** Why nothing was snapshotted, when nothing was. */
  skipped?: string;
  /** Older snapshots removed by retention. */
  retired: string[];
}

export type SnapshotPhase = 'validating' | 'snapshotting' | 'retaining' | 'completed' | 'failed';

export interface SnapshotProgress {
  phase: SnapshotPhase;
  instanceId: string;
  volumesDone: number;
  volumesTotal: number;
  bytesUploaded: number;
}

export const snapshotProgressQuery = defineQuery<SnapshotProgress>('progress');

/** Host activity input: snapshot one volume of an instance running on this host. */
export interface SnapshotVolumeInput {
  snapshotId: string;
  account: string;
  instanceId: string;
  volumeId: string;
  event: string;
  /** Workflow time, so every attempt writes the same manifest. */
  createdAt: string;
}

/** Control activity output: what to snapshot, and for whom. */
export interface SnapshotPlan {
  instanceId: string;
  account: string;
  hostId: string;
  volumes: (Pick<VolumeRecord, 'volumeId' | 'sizeBytes' | 'blockSize' | 'kind'> & {
    /** Snapshots of the volume the account held when planned (absent in plans made before it was counted). */
    snapshotsHeld?: number;
  })[];
}

export interface RestoreInstanceInput {
  /** Only the owning account may restore. */
  account: string;
  /** Snapshots of the instance's volumes, one per volume (all of the same instance). */
  snapshotIds: string[];
  /** Where to restore; default: placement picks a host with room. */
  targetHostId?: string;
  /** Hosts placement must not pick (e.g. a migration's failed target and its lost source). */
  avoidHostIds?: string[];
  /** Why (shown in the Web UI and the result): 'manual' or 'migration:<workflowId>'. */
  reason?: string;
}

export interface RestorePlan {
  instanceId: string;
  account: string;
  /** Where the inventory had the instance before the restore. */
  fromHostId: string;
  hostId: string;
  resources: Resources;
  workload: WorkloadConfig;
  volumes: (Pick<VolumeRecord, 'volumeId' | 'sizeBytes' | 'blockSize' | 'userData'> & {
    snapshotId: string;
  })[];
}

export interface RestoreInstanceResult {
  instanceId: string;
  account: string;
  fromHostId: string;
  hostId: string;
  snapshotIds: string[];
  bytesRestored: number;
  /** Whether the previous copy of the instance was stopped and removed (false: its host did not answer). */
  previousReleased: boolean;
}

export type RestorePhase =
  'validating' | 'reserving' | 'restoring' | 'releasing' | 'starting' | 'committing' | 'completed' | 'failed';

export interface RestoreProgress {
  phase: RestorePhase;
  instanceId: string;
  hostId: string;
  volumesDone: number;
  volumesTotal: number;
  bytesRestored: number;
}

export const restoreProgressQuery = defineQuery<RestoreProgress>('progress');

/** Host activity input: write one volume of the instance from its snapshot on this host. */
export interface RestoreVolumeInput {
  restoreId: string;
  account: string;
  snapshotId: string;
  instanceId: string;
  volumeId: string;
}

/** Host activity input: run a restored instance here (its volumes restored already). */
export interface StartRestoredInput {
  restoreId: string;
  instanceId: string;
  account: string;
  volumes: RestorePlan['volumes'];
  workload: WorkloadConfig;
}

export interface DeleteSnapshotInput {
  account: string;
  snapshotId: string;
}
