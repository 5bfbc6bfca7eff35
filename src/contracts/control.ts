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
  /** The asking workflow's id: the image's disk room is reserved under it until the volume is committed. */
  key: string;
  instanceId: string;
  path: string;
  workloadWrites: boolean;
}

export type VolumePlan = Pick<
  VolumeRecord,
  'volumeId' | 'instanceId' | 'hostId' | 'sizeBytes' | 'blockSize' | 'userData'
>;

/** Records the imported volume and drops the reservation that held its room, in one transaction. */
export type CommitVolumeInput = VolumePlan & { key: string };
