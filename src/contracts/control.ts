import type { Resources, VolumeRecord } from './fleet';

/** Inputs of control-plane (inventory and placement) activities. */

export interface ReserveInput {
  /** The asking workflow's id: the same key never reserves twice. */
  key: string;
  hostId: string;
  instanceId: string;
  resources: Resources;
}

export interface CommitMigrationInput {
  key: string;
  instanceId: string;
  sourceHostId: string;
  targetHostId: string;
}

export interface PlanVolumeImportInput {
  instanceId: string;
  path: string;
  workloadWrites: boolean;
}

export type VolumePlan = Pick<
  VolumeRecord,
  'volumeId' | 'instanceId' | 'hostId' | 'sizeBytes' | 'blockSize' | 'userData'
>;
