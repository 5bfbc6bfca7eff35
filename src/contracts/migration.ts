import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { Resources, VolumeRecord } from './fleet';

export interface LiveMigrationInput {
  instanceId: string;
  targetHostId: string;
  /** Background copy limit in bytes/s; 0 or absent = unlimited. Changeable with `setBandwidth`. */
  bandwidthBytesPerSec?: number;
}

export type MigrationPhase =
  | 'validating'
  | 'reserving'
  | 'instantiating'
  | 'switching'
  | 'syncing'
  | 'verifying'
  | 'releasing'
  | 'committing'
  | 'rolling-back'
  | 'completed'
  | 'rolled-back'
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
  blocksVerified: number;
  blocksWrittenOnTarget: number;
  durationMs: number;
  /** A cancel arrived after the switch: it was refused and the sync completed. */
  cancelRefused: boolean;
  /** Workflow time spent in each phase, ms. */
  phaseMs?: Partial<Record<MigrationPhase, number>>;
}

export const progressQuery = defineQuery<MigrationProgress>('progress');
export const setBandwidthUpdate = defineUpdate<number, [number]>('setBandwidth');
