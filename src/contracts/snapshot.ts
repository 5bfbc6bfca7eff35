/**
 * Snapshots of instance-store volumes kept in the network storage service (the snapshot store),
 * shared by host and control activities, workflows and the CLI.
 */

/** Content addressing: every chunk is named by this hash of its bytes (64 hex characters). */
export const SNAPSHOT_HASH_ALGORITHM = 'blake3';
export type SnapshotHashAlgorithm = typeof SNAPSHOT_HASH_ALGORITHM;

/** Snapshots kept per volume when the caller does not say (retention). */
export const DEFAULT_SNAPSHOTS_KEPT_PER_VOLUME = 3;

/** What a caller says about a snapshot when it starts uploading it. */
export interface SnapshotUploadMeta {
  /** Chosen by the caller (e.g. derived from the workflow id) so a retried upload finds its own. */
  snapshotId: string;
  /** The customer account that owns the snapshot; only it may read, restore or delete it. */
  account: string;
  instanceId: string;
  volumeId: string;
  sizeBytes: number;
  blockSize: number;
  /** Bytes per chunk (the unit of dedupe); default blockSize. The last chunk may be shorter. */
  chunkSize?: number;
  /** Why the snapshot was taken: 'manual', or e.g. 'migration:<migrationId>'. */
  sourceEvent: string;
  /** ISO 8601 time (e.g. workflow time), given by the caller so that retries agree on it. */
  createdAt: string;
}

/** A committed snapshot without its chunk list: small enough for activity results and listings. */
export interface SnapshotInfo {
  snapshotId: string;
  account: string;
  instanceId: string;
  volumeId: string;
  sizeBytes: number;
  blockSize: number;
  chunkSize: number;
  chunkCount: number;
  hashAlgorithm: SnapshotHashAlgorithm;
  sourceEvent: string;
  createdAt: string;
  /**
   * Bytes this snapshot added to the store (chunks it did not find there already), over all its
   * upload attempts. Chunks stored just before a writer was killed, but not yet journalled, are
   * found by dedupe on the retry and not counted.
   */
  bytesUploaded: number;
  /** Bytes of volume it covers (= sizeBytes). */
  bytesTotal: number;
}

/** The manifest of a committed snapshot: chunks[i] is the hash of volume bytes [i*chunkSize, ...). */
export interface SnapshotManifest extends SnapshotInfo {
  chunks: string[];
}

export interface SnapshotListFilter {
  account: string;
  volumeId?: string;
  instanceId?: string;
}

/** What a garbage collection of one account's chunks did. */
export interface SnapshotGcResult {
  /** Set when the collection did not run, e.g. because an upload for the account is open. */
  skipped?: string;
  packsDeleted: number;
  packsRepacked: number;
  /** Stored bytes removed (dead chunks, orphan packs, abandoned uploads). */
  bytesFreed: number;
  /** Stored chunk bytes still referenced by a snapshot. */
  bytesLive: number;
}

export interface SnapshotDeleteResult {
  snapshotId: string;
  /** False when the account had no such snapshot (already deleted, e.g. by an earlier attempt). */
  deleted: boolean;
  gc: SnapshotGcResult;
}

export interface SnapshotRetainResult {
  /** Ids deleted, newest first. */
  deleted: string[];
  kept: string[];
  gc: SnapshotGcResult;
}
