import type { InstanceLaunch } from './fleet';

/** Inputs and results of the activities a host agent serves on its own task queue. */

export interface PrepareTargetInput {
  migrationId: string;
  sourceHostId: string;
  launch: InstanceLaunch;
}

export interface SwitchInput {
  migrationId: string;
  instanceId: string;
  sourceHostId: string;
}

export interface SyncSliceInput {
  migrationId: string;
  volumeId: string;
  sourceHostId: string;
  /** Initial limit in bytes/s (0 = unlimited); `setSyncBandwidth` changes it while running. */
  bandwidthBytesPerSec: number;
  /** Return after about this long so the workflow can report progress; the cursor carries over. */
  maxSliceMs: number;
}

export interface SyncSliceResult {
  done: boolean;
  blocksDone: number;
  blocksTotal: number;
  /** Bytes this slice copied from the source by the background copy. */
  bytesCopied: number;
  /** Bytes fetched on demand because the workload touched a block the target lacked (cumulative). */
  bytesReadThrough: number;
  /** Bytes the background copy wrote more than once, e.g. after a crash (cumulative, engine counter). */
  bytesRecopied: number;
}

export interface VerifyInput {
  migrationId: string;
  volumeId: string;
  sourceHostId: string;
}

export interface VerifyResult {
  blocksVerified: number;
  blocksWrittenOnTarget: number;
  /** Blocks whose hash differed; they are marked missing again so another sync pass re-copies them. */
  mismatchedBlocks: number[];
}

export interface MigrationRef {
  migrationId: string;
  instanceId: string;
}

export interface InstanceRef {
  instanceId: string;
}

export interface ImportVolumeInput {
  volumeId: string;
  instanceId: string;
  path: string;
  sizeBytes: number;
  blockSize: number;
  userData: boolean;
}

export interface LaunchResult {
  instanceId: string;
  volumes: number;
}
