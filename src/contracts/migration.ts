import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { RestoreInstanceResult } from './recovery';
import type { Resources, VolumeRecord } from './fleet';

export interface LiveMigrationInput {
  instanceId: string;
  targetHostId: string;
  /** Background copy limit in bytes/s; 0 or absent = unlimited. Changeable with `setBandwidth`. */
  bandwidthBytesPerSec?: number;
  /**
   * Snapshot the instance-store volumes before the switch (default true), so an instance whose
   * target launch fails while its source is lost is restored elsewhere instead of lost.
   */
  snapshot?: boolean;
  /** Keep that snapshot after a successful migration (default false: it is deleted). */
  keepSnapshot?: boolean;
}

export type MigrationPhase =
  | 'validating'
  | 'reserving'
  | 'instantiating'
  | 'snapshotting'
  | 'switching'
  | 'syncing'
  | 'verifying'
  | 'releasing'
  | 'committing'
  | 'rolling-back'
  | 'completed'
  | 'rolled-back'
  | 'restoring'
  | 'restored'
  | 'failed';

/** What the control plane found when validating a migration request. */
export interface MigrationPlan {
  instanceId: string;
  account: string;
  sourceHostId: string;
  targetHostId: string;
  resources: Resources;
  volumes: VolumeRecord[];
  workload: { writeBytesPerSec: number; writeSize: number };
}

export interface MigrationProgress {
  phase: MigrationPhase;
  instanceId: string;
  sourceHostId?: string;
  targetHostId: string;
  blocksDone: number;
  blocksTotal: number;
  bytesCopied: number;
  bytesTotal: number;
  /** Background copy rate over the sync so far, bytes/s. */
  rateBytesPerSec: number;
  /** Seconds until the sync is done at the current rate; null before the sync starts. */
  etaSeconds: number | null;
  bandwidthBytesPerSec: number;
  switched: boolean;
  cancelRefused: boolean;
}

export interface SwitchResult {
  /** Last sequence number the workload wrote on the source; the target continues after it. */
  lastSourceSeq: number;
  /** Wall-clock (epoch ms) when the source stopped and the target started. */
  pausedAtMs: number;
  resumedAtMs: number;
  downtimeMs: number;
}

export interface LiveMigrationResult {
  instanceId: string;
  account: string;
  sourceHostId: string;
  targetHostId: string;
  downtimeMs: number;
  bytesCopied: number;
  bytesReadThrough: number;
  /** Bytes the sync engine copied more than once (e.g. chunks in flight when a host agent was killed). */
  bytesRecopied?: number;
  blocksVerified: number;
  blocksWrittenOnTarget: number;
  durationMs: number;
  /**
   * False when the source host never answered its release (it died for good after the sync): the
   * instance was committed on the target, and its stale copy is left on the source to delete.
   */
  sourceReleased?: boolean;
  /** A cancel arrived after the switch: it was refused and the sync completed. */
  cancelRefused: boolean;
  /** Workflow time spent in each phase, ms. */
  phaseMs?: Partial<Record<MigrationPhase, number>>;
  /** The pre-migration snapshots (kept only when asked, or when they were restored from). */
  snapshotIds?: string[];
  /**
   * Set when the switch failed and the source was lost: the instance was restored from its
   * pre-migration snapshot on another host (writes after the snapshot's instant are lost). Then
   * targetHostId is where it was meant to go, `restored.hostId` where it runs, and the sync fields are 0.
   */
  restored?: RestoreInstanceResult;
}

export const progressQuery = defineQuery<MigrationProgress>('progress');
export const setBandwidthUpdate = defineUpdate<number, [number]>('setBandwidth');
