import { randomBytes } from 'node:crypto';
import {
  assertId,
  assertObject,
  dataIntegrity,
  DEFAULT_SNAPSHOTS_KEPT_PER_VOLUME,
  forbidden,
  invalidInput,
  invalidState,
  MAX_VOLUME_BYTES,
  MiB,
  notFound,
  SECTOR_SIZE,
  SNAPSHOT_HASH_ALGORITHM,
  type SnapshotDeleteResult,
  type SnapshotGcResult,
  type SnapshotInfo,
  type SnapshotListFilter,
  type SnapshotManifest,
  type SnapshotRetainResult,
  type SnapshotUploadMeta,
} from '../contracts';
import { chunkHash, ChunkHasher, HASH_BYTES } from './chunk-hasher';
import {
  AccountChunkIndex,
  encodePackIndex,
  newPackId,
  packIndexKey,
  packKey,
  type PackEntry,
  type PackInfo,
} from './chunk-pack';
import { readFileRange, subRange, type FileRange, type PatchedRange } from './file-range';
import type { ObjectStore, StagedObject } from './object-store';
import { SnapshotLocks } from './snapshot-locks';

/**
 * The snapshot store: content-addressed chunks of volume snapshots, per account, in an ObjectStore.
 *
 * Keys (account-relative unless noted):
 *   packs/<xx>/<packId>.pack|.idx    chunk data and its index (see chunk-pack.ts)
 *   snapshots/<id>.json              manifest with the chunk list: its put commits the snapshot
 *   snapshots/<id>.info.json         the same without chunks, so listings stay cheap
 *   snapshots/<id>.<name>.json       callers' sidecars (e.g. capture facts): deleted with the snapshot
 *   uploads/<id>/meta.json           an open upload
 *   uploads/<id>/<first>-<r>.piece   hashes of chunks an upload made durable (its resume journal)
 *   locks/…                          see snapshot-locks.ts
 *   snapshot-owners.d/<id>           (store-wide) the owning account: ids are unique across accounts,
 *                                    and a wrong account is told "not yours", not "not found"
 *
 * Crash safety comes from put order alone: pack, then its index, then the piece naming the chunks;
 * the manifest only after every chunk it names is in an indexed pack. Whatever a killed writer
 * leaves is either found again on reopen or garbage for gc().
 *
 * Deleting removes the manifest (idempotent: an absent one gives `deleted: false`); gc() then
 * removes packs with no live chunk and rewrites packs under half live. Uploads dedupe against any
 * stored chunk, so gc never runs while an upload of the account is open, in this process or
 * another (snapshot-locks.ts): it reports itself skipped and the next delete or retain catches up.
 *
 * Each process keeps an in-memory index per account (hash → pack, offset), about 500 bytes per
 * stored chunk (~8 MB per GiB of unique data at 64 KiB chunks), refreshed from the pack indexes
 * when an upload opens, when gc runs and when a read misses.
 */

export interface SnapshotStoreOptions {
  /** Shared hashing workers; by default the store starts its own (close() stops them). */
  hasher?: ChunkHasher;
  /** Largest pack a single put writes (default 64 MiB). */
  maxPackBytes?: number;
  /** GC rewrites a pack whose live bytes fall below this fraction of it (default 0.5). */
  repackBelowLiveFraction?: number;
  /** An upload lock not refreshed for this long is abandoned (default 10 min). */
  lockStaleMs?: number;
  /** How long opening an upload waits for a running GC of the account (default 60 s). */
  waitForGcMs?: number;
}

export interface UploadProgress {
  /** Every chunk before this one is durably stored: heartbeat it as the resume cursor. */
  nextChunk: number;
  chunkCount: number;
  bytesUploaded: number;
}

export interface UploadFromOptions {
  /** Default: the writer's nextChunk (where a previous attempt stopped). */
  fromChunk?: number;
  /** Bytes read and handed to putBlocks at a time (default 16 MiB, rounded to whole chunks). */
  batchBytes?: number;
  /** Batches being read, hashed or stored at once (default 3). */
  inFlight?: number;
  onProgress?: (progress: UploadProgress) => void | Promise<void>;
}

/** Reads volume bytes at `position` into `target`; returns bytes read (0 at the end). */
export type ReadAt = (position: number, target: Buffer) => Promise<number>;

/**
 * Hands the `length` volume bytes at `position` to `use`, either read into `scratch()` (large enough)
 * or lent in place in a file; they stay as they are until `use` resolves, and no longer.
 */
export type LendAt = (
  position: number,
  length: number,
  scratch: () => Buffer,
  use: (bytes: Buffer | PatchedRange) => Promise<void>,
) => Promise<void>;

/** A chunk to store. */
interface NewChunk {
  hash: string;
  data: Buffer;
}

const OWNERS = 'snapshot-owners.d';
const NO_COLLECTION = { packsDeleted: 0, packsRepacked: 0, bytesFreed: 0, bytesLive: 0 };
const SOURCE_EVENT = /^[A-Za-z0-9][A-Za-z0-9:._/-]{0,199}$/;
const MIN_CHUNK = 4096;
const MAX_CHUNK = 16 * MiB;
/** Batch buffers kept for the next upload, at most (three lanes of the default batch size). */
const SPARE_BUFFER_BYTES = 3 * 16 * MiB;

const manifestKey = (account: string, id: string) => `${account}/snapshots/${id}.json`;
const infoKey = (account: string, id: string) => `${account}/snapshots/${id}.info.json`;
const uploadPrefix = (account: string, id: string) => `${account}/uploads/${id}/`;
const uploadMetaKey = (account: string, id: string) => `${uploadPrefix(account, id)}meta.json`;
const ownerKey = (id: string) => `${OWNERS}/${id}`;

interface Piece {
  first: number;
  bytesUploaded: number;
  hashes: string[];
}

type Meta = Required<SnapshotUploadMeta>;

export class SnapshotStore {
  /** @internal The hashing workers, shared with SnapshotWriter. */
  readonly hasher: ChunkHasher;
  private readonly ownsHasher: boolean;
  private readonly indexes = new Map<string, AccountChunkIndex>();
  private readonly gcRuns = new Map<string, Promise<SnapshotGcResult>>();
  /** The collection queued behind the running one, per account, for later requests to join. */
  private readonly gcWaiting = new Map<string, Promise<SnapshotGcResult>>();
  readonly locks: SnapshotLocks;
  readonly maxPackBytes: number;
  private readonly repackBelow: number;
  /** Batch buffers between uploads: fresh memory is slow to touch the first time (page faults). */
  private readonly spareBuffers: Buffer[] = [];

  constructor(
    readonly objects: ObjectStore,
    options: SnapshotStoreOptions = {},
  ) {
    this.ownsHasher = !options.hasher;
    this.hasher = options.hasher ?? new ChunkHasher();
    this.maxPackBytes = options.maxPackBytes ?? 64 * MiB;
    this.repackBelow = options.repackBelowLiveFraction ?? 0.5;
    this.locks = new SnapshotLocks(objects, {
      staleMs: options.lockStaleMs ?? 10 * 60_000,
      waitForGcMs: options.waitForGcMs ?? 60_000,
      pollMs: 100,
    });
  }

  /** Starts the hashing workers ahead of the first snapshot, which would otherwise wait for them. */
  startHashing(): void {
    this.hasher.start();
  }

  async close(): Promise<void> {
    if (this.ownsHasher) await this.hasher.close();
  }

  /**
   * Opens (or, after a crash or on a retry, reopens) the upload of a snapshot. A reopened writer
   * knows the chunks its earlier attempts made durable: resume from `writer.nextChunk`. For a
   * snapshot already committed the writer is `done`: putBlocks is a no-op and commit returns it.
   *
   * `startOver` is for uploads that cannot resume, such as a capture, where each attempt has an
   * instant of its own: what earlier attempts journaled is dropped (their chunks stay, for dedupe),
   * and the writer keeps no journal, which spares an object put per batch and the deletes at commit.
   */
  async openUpload(
    input: SnapshotUploadMeta,
    options: { startOver?: boolean } = {},
  ): Promise<SnapshotWriter> {
    const meta = validateUploadMeta(input);
    const { account, snapshotId } = meta;
    await this.claimOwnership(account, snapshotId);
    const existing = await this.readManifest(account, snapshotId);
    if (existing) {
      assertSameSnapshot(existing, meta);
      return new SnapshotWriter(this, meta, existing, []);
    }
    await this.locks.acquireUpload(account, snapshotId);
    try {
      // Again under the lock: a GC that ran in between may have cleared a claim it took for abandoned.
      await this.claimOwnership(account, snapshotId);
      const metaKey = uploadMetaKey(account, snapshotId);
      const open = await this.objects.get(metaKey);
      if (open) assertSameSnapshot(JSON.parse(open.toString('utf8')) as Meta, meta);
      else await this.objects.put(metaKey, Buffer.from(JSON.stringify(meta)));
      const index = await this.refreshedIndex(account);
      const pieces: Piece[] = [];
      for (const key of await this.objects.list(uploadPrefix(account, snapshotId))) {
        if (!key.endsWith('.piece')) continue;
        if (options.startOver) {
          await this.objects.delete(key);
          continue;
        }
        const raw = await this.objects.get(key);
        if (raw) pieces.push(JSON.parse(raw.toString('utf8')) as Piece);
      }
      const writer = new SnapshotWriter(this, meta, undefined, pieces, !options.startOver);
      writer.forgetMissing(index);
      return writer;
    } catch (err) {
      await this.locks.releaseUpload(account, snapshotId);
      throw err;
    }
  }

  /** The committed manifest, chunk list included. */
  async get(account: string, snapshotId: string): Promise<SnapshotManifest> {
    assertId('account', account);
    assertId('snapshotId', snapshotId);
    const manifest = await this.readManifest(account, snapshotId);
    if (manifest) return manifest;
    await this.assertOwnerOrAbsent(account, snapshotId);
    throw notFound(
      `snapshot ${snapshotId} not found for account ${account} (or its upload has not finished)`,
    );
  }

  /** The committed snapshot without its chunk list. */
  async info(account: string, snapshotId: string): Promise<SnapshotInfo> {
    assertId('account', account);
    assertId('snapshotId', snapshotId);
    const raw = await this.objects.get(infoKey(account, snapshotId));
    if (raw && (await this.objects.has(manifestKey(account, snapshotId)))) {
      return JSON.parse(raw.toString('utf8')) as SnapshotInfo;
    }
    return toInfo(await this.get(account, snapshotId));
  }

  /** The account's committed snapshots, newest first (createdAt, then id). */
  async list(filter: SnapshotListFilter): Promise<SnapshotInfo[]> {
    assertObject('snapshot list filter', filter);
    const account = assertId('account', filter.account);
    if (filter.volumeId !== undefined) assertId('volumeId', filter.volumeId);
    if (filter.instanceId !== undefined) assertId('instanceId', filter.instanceId);
    const out: SnapshotInfo[] = [];
    for (const key of await this.objects.list(`${account}/snapshots/`)) {
      const m = /\/snapshots\/([a-z0-9-]+)\.json$/.exec(key);
      if (!m) continue;
      const raw = await this.objects.get(infoKey(account, m[1]));
      const info = raw
        ? (JSON.parse(raw.toString('utf8')) as SnapshotInfo)
        : await this.infoFromManifest(account, m[1]);
      if (!info) continue; // deleted meanwhile
      if (filter.volumeId !== undefined && info.volumeId !== filter.volumeId) continue;
      if (filter.instanceId !== undefined && info.instanceId !== filter.instanceId) continue;
      out.push(info);
    }
    return out.sort(newestFirst);
  }

  /**
   * `count` chunks of a snapshot from `firstChunk`, concatenated (the last chunk of the volume may
   * be short). Every chunk is checked against its hash: a mismatch or a missing chunk throws
   * DataIntegrity naming the snapshot, chunk and hash; wrong bytes are never returned.
   */
  async readChunks(account: string, snapshotId: string, firstChunk: number, count: number): Promise<Buffer> {
    const manifest = await this.get(account, snapshotId);
    assertChunkRange(manifest, firstChunk, count);
    return this.readVerified(manifest, firstChunk, count);
  }

  /** The whole snapshot (or the rest of it from fromChunk) in verified batches, for a restore. */
  async *readAll(
    account: string,
    snapshotId: string,
    options: { fromChunk?: number; batchChunks?: number } = {},
  ): AsyncGenerator<{ firstChunk: number; data: Buffer }> {
    const manifest = await this.get(account, snapshotId);
    const from = options.fromChunk ?? 0;
    assertChunkRange(manifest, from, 0);
    const batch = options.batchChunks ?? Math.max(1, Math.floor((16 * MiB) / manifest.chunkSize));
    // One batch is read ahead while the caller writes the previous one out.
    const read = (first: number) => {
      const p = this.readVerified(manifest, first, Math.min(batch, manifest.chunkCount - first));
      void p.catch(() => undefined); // awaited below; a caller that stops early must not see it unhandled
      return p;
    };
    let ahead = from < manifest.chunkCount ? read(from) : undefined;
    for (let first = from; ahead; first += batch) {
      const data = await ahead;
      ahead = first + batch < manifest.chunkCount ? read(first + batch) : undefined;
      yield { firstChunk: first, data };
    }
  }

  /**
   * Deletes a committed snapshot of the account, then collects the chunks no snapshot needs any
   * more. Idempotent: a snapshot the account no longer has gives `deleted: false`, not an error,
   * so a retried delete succeeds. Another account's snapshot is refused (Forbidden).
   */
  async delete(account: string, snapshotId: string): Promise<SnapshotDeleteResult> {
    const deleted = await this.deleteManifest(account, snapshotId);
    return { snapshotId, deleted, gc: await this.gc(account) };
  }

  /** Keeps the newest `keepLast` snapshots of a volume, deletes the older ones, then collects. */
  async retain(
    account: string,
    volumeId: string,
    keepLast = DEFAULT_SNAPSHOTS_KEPT_PER_VOLUME,
  ): Promise<SnapshotRetainResult> {
    assertId('account', account);
    assertId('volumeId', volumeId);
    if (!Number.isSafeInteger(keepLast) || keepLast < 1) {
      throw invalidInput(
        `keepLast must be a whole number >= 1 (snapshots kept per volume), got ${String(keepLast)}; to remove every snapshot, delete them one by one`,
      );
    }
    const all = await this.list({ account, volumeId });
    const kept = all.slice(0, keepLast).map((s) => s.snapshotId);
    const deleted: string[] = [];
    for (const s of all.slice(keepLast)) {
      if (await this.deleteManifest(account, s.snapshotId)) deleted.push(s.snapshotId);
    }
    // Nothing new to collect: a collection now would only cost the snapshot it follows (it reads
    // every pack index of the account). Crash leftovers wait for the next delete.
    if (deleted.length === 0)
      return { deleted, kept, gc: { ...NO_COLLECTION, skipped: 'nothing was deleted' } };
    return { deleted, kept, gc: await this.gc(account) };
  }

  /**
   * Removes stored chunks no committed snapshot references: packs with no live chunk are deleted,
   * packs whose live bytes fall below repackBelowLiveFraction are rewritten with only their live
   * chunks. Also clears uploads abandoned by killed writers (stale lock) and crash leftovers.
   * Skipped (result.skipped says why) while an upload of the account is open, since that upload
   * may be relying on chunks no manifest names yet; the next delete or retain catches up.
   */
  async gc(account: string): Promise<SnapshotGcResult> {
    assertId('account', account);
    // One collection per account at a time in this process: a request made while one runs waits
    // for it (the lock protocol would make it skip, and it may have a fresh deletion to collect),
    // then runs once more. Requests made while that next run waits to start join it: it collects
    // what they deleted too. Without joining, N deletions at once queued N full collections, and
    // uploads waiting on them timed out.
    const waiting = this.gcWaiting.get(account);
    if (waiting) return waiting;
    const previous = this.gcRuns.get(account);
    const run = previous
      ? previous
          .catch(() => undefined)
          .then(() => {
            this.gcWaiting.delete(account);
            return this.collect(account);
          })
      : this.collect(account);
    if (previous) this.gcWaiting.set(account, run);
    this.gcRuns.set(account, run);
    try {
      return await run;
    } finally {
      if (this.gcRuns.get(account) === run) this.gcRuns.delete(account);
    }
  }

  // ---- internals shared with SnapshotWriter ----

  /** @internal */
  async refreshedIndex(account: string): Promise<AccountChunkIndex> {
    const index = this.indexFor(account);
    await index.refresh(this.objects);
    return index;
  }

  /** @internal */
  indexFor(account: string): AccountChunkIndex {
    let index = this.indexes.get(account);
    if (!index) {
      index = new AccountChunkIndex(account);
      this.indexes.set(account, index);
    }
    return index;
  }

  /**
   * @internal Puts a staged pack in place, then its index, and adds it to the account index. The
   * entries count as being stored (concurrent putBlocks wait for them) from the call on; `finish`
   * completes the pack's bytes first.
   */
  async commitStagedPack(
    account: string,
    packId: string,
    staged: StagedObject,
    entries: PackEntry[],
    finish: () => Promise<void>,
  ): Promise<void> {
    await this.whileStoring(account, entries, async () => {
      await finish();
      await staged.commit();
      await this.objects.put(packIndexKey(account, packId), encodePackIndex(entries));
      this.indexFor(account).addPack(packId, entries);
    });
  }

  /** @internal A shared buffer of at least `size` bytes, an earlier upload's if one fits. */
  takeBuffer(size: number): Buffer {
    const i = this.spareBuffers.findIndex((b) => b.length >= size);
    return i >= 0 ? this.spareBuffers.splice(i, 1)[0] : ChunkHasher.sharedBuffer(size);
  }

  /** @internal Gives back a buffer from takeBuffer once nothing reads or writes it any more. */
  giveBackBuffer(buffer: Buffer): void {
    const kept = this.spareBuffers.reduce((n, b) => n + b.length, 0);
    if (kept + buffer.length <= SPARE_BUFFER_BYTES) this.spareBuffers.push(buffer);
  }

  /** @internal Stores chunks as packs (each pack, then its index) and adds them to the account index. */
  async storePacks(account: string, chunks: NewChunk[]): Promise<void> {
    if (chunks.length === 0) return;
    await this.whileStoring(account, chunks, () => this.writePacks(account, chunks));
  }

  /**
   * Marks the chunks as being stored, synchronously (so a caller that just found them new claims
   * them before any other can), until `store` settles: concurrent putBlocks calls wait for them
   * instead of storing them a second time.
   */
  private async whileStoring(account: string, chunks: { hash: string }[], store: () => Promise<void>) {
    const index = this.indexFor(account);
    let settle!: (ok: boolean) => void;
    const done = new Promise<boolean>((resolve) => (settle = resolve));
    for (const c of chunks) index.pending.set(c.hash, done);
    try {
      await store();
      settle(true);
    } catch (err) {
      settle(false);
      throw err;
    } finally {
      for (const c of chunks) if (index.pending.get(c.hash) === done) index.pending.delete(c.hash);
    }
  }

  private async writePacks(account: string, chunks: NewChunk[]): Promise<void> {
    const index = this.indexFor(account);
    for (let start = 0, end = 0; start < chunks.length; start = end) {
      let bytes = 0;
      for (end = start; end < chunks.length; end++) {
        const length = chunks[end].data.length;
        if (bytes > 0 && bytes + length > this.maxPackBytes) break;
        bytes += length;
      }
      const group = chunks.slice(start, end);
      let offset = 0;
      const entries: PackEntry[] = group.map((c) => {
        const entry = { hash: c.hash, offset, length: c.data.length };
        offset += c.data.length;
        return entry;
      });
      const packId = newPackId();
      await this.objects.put(packKey(account, packId), coalesce(group.map((c) => c.data)));
      await this.objects.put(packIndexKey(account, packId), encodePackIndex(entries));
      index.addPack(packId, entries);
    }
  }

  /**
   * @internal Writes the manifest unless one is there already (a concurrent attempt of the same
   * upload committed first: the first manifest stands). Returns the manifest in force.
   */
  async commitManifest(manifest: SnapshotManifest): Promise<SnapshotManifest> {
    const { account, snapshotId } = manifest;
    const existing = await this.readManifest(account, snapshotId);
    if (!existing) {
      await this.objects.put(manifestKey(account, snapshotId), Buffer.from(JSON.stringify(manifest)));
    }
    const inForce = existing ?? manifest;
    await this.objects.put(infoKey(account, snapshotId), Buffer.from(JSON.stringify(toInfo(inForce))));
    await this.clearUpload(account, snapshotId);
    return inForce;
  }

  /** @internal Removes an upload's journal and lock (its chunks are left to gc). */
  async clearUpload(account: string, snapshotId: string): Promise<void> {
    // The pieces all at once (a GiB has 64): a commit waits for this. The meta goes only after them.
    const pieces = (await this.objects.list(uploadPrefix(account, snapshotId))).filter(
      (key) => !key.endsWith('meta.json'),
    );
    await Promise.all(pieces.map((key) => this.objects.delete(key)));
    await this.objects.delete(uploadMetaKey(account, snapshotId));
    await this.locks.releaseUpload(account, snapshotId);
  }

  /** @internal Abort: the upload goes, and the id is free again unless the snapshot was committed. */
  async abandonUpload(account: string, snapshotId: string): Promise<void> {
    await this.clearUpload(account, snapshotId);
    if (!(await this.objects.has(manifestKey(account, snapshotId)))) {
      await this.objects.delete(ownerKey(snapshotId));
    }
  }

  /** @internal */
  async putPiece(account: string, snapshotId: string, piece: Piece): Promise<void> {
    const name = `${String(piece.first).padStart(12, '0')}-${randomBytes(4).toString('hex')}.piece`;
    await this.objects.put(`${uploadPrefix(account, snapshotId)}${name}`, Buffer.from(JSON.stringify(piece)));
  }

  // ---- private ----

  private async claimOwnership(account: string, snapshotId: string): Promise<void> {
    const raw = await this.objects.get(ownerKey(snapshotId));
    if (raw === undefined) {
      await this.objects.put(ownerKey(snapshotId), Buffer.from(account));
    } else if (raw.toString('utf8') !== account) {
      throw forbidden(
        `snapshot ${snapshotId} does not belong to account ${account}: choose another snapshot id`,
      );
    }
  }

  private async assertOwnerOrAbsent(account: string, snapshotId: string): Promise<void> {
    const owner = await this.objects.get(ownerKey(snapshotId));
    if (owner !== undefined && owner.toString('utf8') !== account) {
      throw forbidden(`snapshot ${snapshotId} does not belong to account ${account}`);
    }
  }

  private async readManifest(account: string, snapshotId: string): Promise<SnapshotManifest | undefined> {
    const raw = await this.objects.get(manifestKey(account, snapshotId));
    return raw ? (JSON.parse(raw.toString('utf8')) as SnapshotManifest) : undefined;
  }

  private async infoFromManifest(account: string, snapshotId: string): Promise<SnapshotInfo | undefined> {
    const manifest = await this.readManifest(account, snapshotId);
    return manifest && toInfo(manifest);
  }

  /** True if this call removed the manifest; the chunks stay until gc. */
  private async deleteManifest(account: string, snapshotId: string): Promise<boolean> {
    assertId('account', account);
    assertId('snapshotId', snapshotId);
    await this.assertOwnerOrAbsent(account, snapshotId);
    const existed = await this.objects.has(manifestKey(account, snapshotId));
    if (!existed && (await this.objects.has(uploadMetaKey(account, snapshotId)))) {
      throw invalidState(
        `snapshot ${snapshotId} of account ${account} is still being uploaded: wait for the upload to finish (or abort it) before deleting`,
      );
    }
    await this.objects.delete(manifestKey(account, snapshotId)); // the deletion's commit point
    // The info object and any sidecar a caller keeps beside the manifest (snapshots/<id>.<name>).
    for (const key of await this.objects.list(`${account}/snapshots/${snapshotId}.`)) {
      await this.objects.delete(key);
    }
    await this.objects.delete(ownerKey(snapshotId));
    return existed;
  }

  private async readVerified(manifest: SnapshotManifest, first: number, count: number): Promise<Buffer> {
    const { account, snapshotId, chunkSize, sizeBytes } = manifest;
    const total = Math.min(sizeBytes, (first + count) * chunkSize) - first * chunkSize;
    const out = ChunkHasher.sharedBuffer(total);
    let refreshed = false;
    for (let i = 0; i < count;) {
      const run = this.locateRun(manifest, first + i, count - i);
      const expected = run ? Math.min(total - i * chunkSize, run.chunks * chunkSize) : 0;
      const bytes = run && (await this.objects.getRange(packKey(account, run.packId), run.offset, run.bytes));
      if (!run || !bytes || bytes.length !== expected || run.bytes !== expected) {
        if (!refreshed) {
          // Packs written, repacked or deleted by another process since this one last looked.
          await this.refreshedIndex(account);
          refreshed = true;
          continue;
        }
        const what = `snapshot ${snapshotId} chunk ${first + i} (${SNAPSHOT_HASH_ALGORITHM} ${manifest.chunks[first + i]})`;
        throw dataIntegrity(
          run
            ? `${what} is truncated or missing in pack ${run.packId}: the snapshot cannot be restored`
            : `${what} is missing from the store: the snapshot cannot be restored`,
        );
      }
      bytes.copy(out, i * chunkSize);
      i += run.chunks;
    }
    const hashes = await this.hasher.hashChunks(out, chunkSize);
    for (let i = 0; i < count; i++) {
      const actual = hashes.toString('hex', i * HASH_BYTES, (i + 1) * HASH_BYTES);
      const expected = manifest.chunks[first + i];
      if (actual !== expected) {
        throw dataIntegrity(
          `snapshot ${snapshotId} chunk ${first + i} is corrupt: its stored bytes hash to ${actual}, expected ${SNAPSHOT_HASH_ALGORITHM} ${expected}; the snapshot cannot be restored from this store`,
        );
      }
    }
    return out;
  }

  /** The longest run of a snapshot's chunks from `chunk` stored back to back in one pack: one get. */
  private locateRun(
    manifest: SnapshotManifest,
    chunk: number,
    max: number,
  ): { packId: string; offset: number; bytes: number; chunks: number } | undefined {
    const index = this.indexFor(manifest.account);
    const loc = index.get(manifest.chunks[chunk]);
    if (!loc) return undefined;
    let bytes = loc.length;
    let n = 1;
    for (; n < max; n++) {
      const next = index.get(manifest.chunks[chunk + n]);
      if (next?.packId !== loc.packId || next.offset !== loc.offset + bytes) break;
      bytes += next.length;
    }
    return { packId: loc.packId, offset: loc.offset, bytes, chunks: n };
  }

  private async collect(account: string): Promise<SnapshotGcResult> {
    const result: SnapshotGcResult = { ...NO_COLLECTION };
    const lock = await this.locks.acquireGc(account);
    if ('busy' in lock) return { ...result, skipped: lock.busy };
    try {
      for (const abandoned of lock.abandoned) {
        await this.abandonUpload(account, abandoned.snapshotId!);
      }
      await this.clearUnlockedUploads(account);

      const live = new Set<string>();
      for (const key of await this.objects.list(`${account}/snapshots/`)) {
        const m = /\/snapshots\/([a-z0-9-]+)(\.info)?\.json$/.exec(key);
        if (!m) continue;
        const manifest = await this.readManifest(account, m[1]);
        if (manifest) for (const h of manifest.chunks) live.add(h);
        else if (m[2]) await this.objects.delete(key); // info left by an interrupted delete
      }

      const index = this.indexFor(account);
      const listing = await index.refresh(this.objects);
      for (const packId of listing.packs) {
        if (!listing.indexes.has(packId)) await this.objects.delete(packKey(account, packId)); // orphan
      }
      for (const packId of listing.indexes) {
        if (!listing.packs.has(packId)) await this.objects.delete(packIndexKey(account, packId));
      }

      // Each live hash counts once, in the first pack holding it; other copies are dead weight.
      const counted = new Set<string>();
      const toRepack: { pack: PackInfo; liveBytes: number; entries: PackEntry[] }[] = [];
      for (const pack of index.allPacks()) {
        const liveEntries = pack.entries.filter((e) => live.has(e.hash) && !counted.has(e.hash));
        for (const e of liveEntries) counted.add(e.hash);
        const liveBytes = liveEntries.reduce((n, e) => n + e.length, 0);
        if (liveBytes === 0) {
          await this.deletePack(account, pack.packId);
          result.packsDeleted++;
          result.bytesFreed += pack.bytes;
        } else if (liveBytes < pack.bytes * this.repackBelow) {
          toRepack.push({ pack, liveBytes, entries: liveEntries });
        } else {
          result.bytesLive += liveBytes;
        }
      }
      for (const { pack, liveBytes, entries } of toRepack) {
        if (await this.repack(account, pack.packId, entries)) {
          result.packsRepacked++;
          result.bytesFreed += pack.bytes - liveBytes;
        }
        result.bytesLive += liveBytes;
      }
      result.bytesFreed += (await this.objects.removeStaleTemps?.(`${account}/`)) ?? 0;
      return result;
    } finally {
      await this.locks.releaseGc(lock.key);
    }
  }

  /** Uploads with a journal but no lock at all (a writer killed while clearing it). */
  private async clearUnlockedUploads(account: string): Promise<void> {
    const ids = new Set<string>();
    for (const key of await this.objects.list(`${account}/uploads/`)) {
      const m = /\/uploads\/([a-z0-9-]+)\//.exec(key);
      if (m) ids.add(m[1]);
    }
    for (const id of ids) await this.abandonUpload(account, id);
  }

  /** Index first: an index never names a pack that is not (fully) there. */
  private async deletePack(account: string, packId: string): Promise<void> {
    this.indexFor(account).removePack(packId);
    await this.objects.delete(packIndexKey(account, packId));
    await this.objects.delete(packKey(account, packId));
  }

  /**
   * Copies a pack's live chunks into a new pack, then deletes the old one; false if it did not.
   * Chunks are checked on the way: if one is corrupt the pack is left as it is, so a restore
   * reports exactly that chunk rather than a missing one.
   */
  private async repack(account: string, packId: string, entries: PackEntry[]): Promise<boolean> {
    const data = await this.objects.get(packKey(account, packId));
    if (!data) return false;
    const chunks = entries.map((e) => ({ hash: e.hash, data: data.subarray(e.offset, e.offset + e.length) }));
    if (chunks.some((c) => chunkHash(c.data) !== c.hash)) return false;
    await this.storePacks(account, chunks);
    await this.deletePack(account, packId);
    return true;
  }
}

/**
 * One snapshot being uploaded. putBlocks may run concurrently for different ranges; each resolves
 * once its chunks are durable (a SIGKILL after that loses none of them).
 */
export class SnapshotWriter {
  readonly chunkCount: number;
  private readonly hashes: (string | undefined)[];
  private uploaded = 0;
  /** Whether the account held no snapshot of the volume when this upload first stored a batch. */
  private firstOfVolume?: Promise<boolean>;
  private low = 0;
  private state: 'open' | 'committed' | 'aborted';
  private lastRefresh = Date.now();

  /** @internal use SnapshotStore.openUpload */
  constructor(
    private readonly store: SnapshotStore,
    readonly meta: Readonly<Meta>,
    private manifest: SnapshotManifest | undefined,
    pieces: Piece[],
    /** False for an upload that starts over on every attempt: nothing to resume, so no pieces. */
    private readonly journal = true,
  ) {
    this.chunkCount = Math.ceil(meta.sizeBytes / meta.chunkSize);
    this.hashes = new Array<string | undefined>(this.chunkCount);
    this.state = manifest ? 'committed' : 'open';
    if (manifest) manifest.chunks.forEach((h, i) => (this.hashes[i] = h));
    for (const p of pieces) {
      p.hashes.forEach((h, i) => {
        if (p.first + i < this.chunkCount) this.hashes[p.first + i] = h;
      });
      this.uploaded += p.bytesUploaded;
    }
  }

  /** True when the snapshot is committed (possibly by an earlier attempt): nothing left to do. */
  get done(): boolean {
    return this.state === 'committed';
  }

  /** Every chunk before this one is durably stored; resume an interrupted upload here. */
  get nextChunk(): number {
    while (this.low < this.chunkCount && this.hashes[this.low] !== undefined) this.low++;
    return this.low;
  }

  /** Bytes this snapshot added to the store so far, over all attempts. */
  get bytesUploaded(): number {
    return this.manifest?.bytesUploaded ?? this.uploaded;
  }

  /** @internal Drops journal entries whose chunk is gone (e.g. collected after the lock went stale). */
  forgetMissing(index: AccountChunkIndex): void {
    this.hashes.forEach((h, i) => {
      if (h !== undefined && !index.has(h)) this.hashes[i] = undefined;
    });
  }

  /**
   * Stores whole chunks starting at `firstChunk` (the bytes may span many chunks; only the volume's
   * last chunk may be short), given in a buffer or lent in place in a file. Chunks the account
   * already stores are not stored again. Resolves with the bytes actually uploaded, once they and
   * the chunk hashes are durable; lent bytes must stay unchanged until then.
   */
  async putBlocks(firstChunk: number, bytes: Buffer | PatchedRange): Promise<number> {
    if (this.state === 'committed') return 0; // an earlier attempt finished: nothing to add
    this.assertOpen();
    const { account, snapshotId, chunkSize, sizeBytes } = this.meta;
    const length = Buffer.isBuffer(bytes) ? bytes.length : bytes.range.length;
    const count = Math.ceil(length / chunkSize);
    const expected = Math.min(sizeBytes, (firstChunk + count) * chunkSize) - firstChunk * chunkSize;
    if (!Number.isSafeInteger(firstChunk) || firstChunk < 0 || firstChunk + count > this.chunkCount) {
      throw invalidInput(
        `chunks ${firstChunk}..${firstChunk + count - 1} are outside snapshot ${snapshotId} (chunks 0..${this.chunkCount - 1})`,
      );
    }
    if (length === 0 || length !== expected) {
      throw invalidInput(
        `putBlocks for snapshot ${snapshotId} got ${length} bytes at chunk ${firstChunk}: give whole ${chunkSize}-byte chunks (${expected} bytes for ${count} chunk(s) here)`,
      );
    }
    await this.refreshLock();
    const { hashes, bytesUploaded } =
      !Buffer.isBuffer(bytes) && (await this.storesAsHashed(bytes.range.length))
        ? await this.storeAsHashed(bytes)
        : await this.hashThenStore(bytes);
    if (this.journal) {
      await this.store.putPiece(account, snapshotId, { first: firstChunk, bytesUploaded, hashes });
    }
    this.assertOpen(); // aborted meanwhile: report it rather than resurrect state
    hashes.forEach((h, i) => (this.hashes[firstChunk + i] = h));
    this.uploaded += bytesUploaded;
    return bytesUploaded;
  }

  /** Hashes the chunks, then stores those the account does not have yet. */
  private async hashThenStore(bytes: Buffer | PatchedRange): Promise<Stored> {
    const { account, chunkSize } = this.meta;
    const hashes = Buffer.isBuffer(bytes)
      ? hexHashes(await this.store.hasher.hashChunks(bytes, chunkSize))
      : await this.hashesInPlace(bytes);
    const { fresh: freshAt, storedElsewhere } = this.newChunks(hashes);
    const fresh = Buffer.isBuffer(bytes)
      ? freshAt.map((i) => ({ hash: hashes[i], data: chunkOf(bytes, i, chunkSize) }))
      : // Lent bytes are read only now that they are known to be new: a write may land on them any time.
        await this.readFresh(bytes, hashes, freshAt);
    await this.store.storePacks(account, fresh);
    await this.durableElsewhere(storedElsewhere);
    return { hashes, bytesUploaded: fresh.reduce((n, c) => n + c.data.length, 0) };
  }

  /**
   * Stores the chunks as they are hashed: a volume's first snapshot finds little stored already, so
   * hashing first and storing after would be a second pass over its bytes for nothing. The workers
   * write the batch into a new pack, at the chunks' offsets in the batch; the chunks the account
   * turns out to have already are dropped from it again (their disk blocks freed), and the pack's
   * index lists only the others.
   */
  private async storeAsHashed(lent: PatchedRange): Promise<Stored> {
    const { range } = lent;
    const { account, chunkSize } = this.meta;
    const packId = newPackId();
    const staged = await this.store.objects.stage!(packKey(account, packId), range.length);
    try {
      const stored = await this.store.hasher.storeFileChunks(range, chunkSize, staged.file);
      const hashes = hexHashes(stored.hashes);
      // Blocks written since the instant: the workers may have seen the new bytes, the pack needs the old.
      const patched = await patchChunks(lent, chunkSize);
      for (const [i, data] of patched) hashes[i] = chunkHash(data);
      const inPack = (i: number) => stored.written[i] === 1 || patched.has(i);

      const { fresh, storedElsewhere } = this.newChunks(hashes);
      const entries: PackEntry[] = fresh.map((i) => ({
        hash: hashes[i],
        offset: i * chunkSize,
        length: chunkRange(range, i, chunkSize).length,
      }));
      const isFresh = new Set(fresh);
      // Every chunk not in the index: the pack's space was set aside whole, written or not.
      const dropped = hashes.map((_, i) => i).filter((i) => !isFresh.has(i));
      if (entries.length === 0) {
        await staged.discard();
      } else {
        await this.store.commitStagedPack(account, packId, staged, entries, async () => {
          for (const { offset } of entries) {
            const i = offset / chunkSize;
            // New, but left out by the worker as a repeat of a chunk an override has since changed.
            const data = patched.get(i) ?? (inPack(i) ? undefined : await readLentChunk(lent, i, chunkSize));
            if (data) await staged.write(data, offset);
          }
          for (const [first, count] of runsOf(dropped)) {
            const from = first * chunkSize;
            await staged.drop(from, Math.min(range.length, (first + count) * chunkSize) - from);
          }
        });
      }
      await this.durableElsewhere(storedElsewhere);
      return { hashes, bytesUploaded: entries.reduce((n, e) => n + e.length, 0) };
    } catch (err) {
      await staged.discard();
      throw err;
    }
  }

  /**
   * Which of a batch's chunks (by index) this call stores: the first of each hash that the account
   * does not have and that no concurrent call is storing. Synchronous, so the caller claims them
   * (marks them pending) before another call looks. The chunks a concurrent call is storing come
   * back too: they must be durable before this batch counts.
   */
  private newChunks(hashes: string[]): { fresh: number[]; storedElsewhere: Set<Promise<boolean>> } {
    const index = this.store.indexFor(this.meta.account);
    const fresh: number[] = [];
    const seen = new Set<string>();
    const storedElsewhere = new Set<Promise<boolean>>();
    hashes.forEach((hash, i) => {
      if (index.has(hash) || seen.has(hash)) return;
      seen.add(hash);
      const pending = index.pending.get(hash); // a concurrent call is storing it right now
      if (pending) storedElsewhere.add(pending);
      else fresh.push(i);
    });
    return { fresh, storedElsewhere };
  }

  /** Whether a lent batch this long is stored as hashed: in the volume's first snapshot, if it can be. */
  private async storesAsHashed(length: number): Promise<boolean> {
    if (!this.store.objects.stage || !this.store.hasher.storesInPlace(length)) return false;
    const { account, volumeId } = this.meta;
    this.firstOfVolume ??= this.store.list({ account, volumeId }).then((held) => held.length === 0);
    return this.firstOfVolume;
  }

  /** The chunks a concurrent call was storing must be durable before a piece or commit names them. */
  private async durableElsewhere(storing: Set<Promise<boolean>>): Promise<void> {
    for (const stored of storing) {
      if (!(await stored)) {
        throw new Error(
          `storing a chunk of snapshot ${this.meta.snapshotId} failed in a concurrent call; retry`,
        );
      }
    }
  }

  /**
   * The hashes of lent bytes: hashed in place, except the chunks with an override (blocks written
   * since the capture's instant), which are read, patched and hashed here.
   */
  private async hashesInPlace(lent: PatchedRange): Promise<string[]> {
    const { chunkSize } = this.meta;
    const hashes = hexHashes(await this.store.hasher.hashFileChunks(lent.range, chunkSize));
    for (const [i, data] of await patchChunks(lent, chunkSize)) hashes[i] = chunkHash(data);
    return hashes;
  }

  /** The chunks at `which` (in order) of lent bytes, read as of the instant, a run of them at a time. */
  private async readFresh(lent: PatchedRange, hashes: string[], which: number[]): Promise<NewChunk[]> {
    const { chunkSize } = this.meta;
    const chunks: NewChunk[] = [];
    for (const [first, count] of runsOf(which)) {
      const from = first * chunkSize;
      const to = Math.min(lent.range.length, (first + count) * chunkSize);
      const data = await readLent(lent, from, to - from);
      for (let i = first; i < first + count; i++) {
        chunks.push({ hash: hashes[i], data: chunkOf(data, i - first, chunkSize) });
      }
    }
    return chunks;
  }

  /**
   * Reads the volume through `read` and stores it from `fromChunk` (default nextChunk) to the end,
   * reading, hashing and storing several batches at once. Batches whose chunks are all durable
   * already are skipped. Returns the bytes uploaded by this call.
   */
  uploadFrom(read: ReadAt, options: UploadFromOptions = {}): Promise<number> {
    return this.uploadLent(async (position, length, scratch, use) => {
      const target = scratch().subarray(0, length);
      await readFully(read, position, target);
      await use(target);
    }, options);
  }

  /** As uploadFrom, with the volume's bytes handed over batch by batch (e.g. lent in place). */
  async uploadLent(lend: LendAt, options: UploadFromOptions = {}): Promise<number> {
    if (this.state === 'committed') return 0;
    this.assertOpen();
    const { chunkSize, sizeBytes } = this.meta;
    const from = options.fromChunk ?? this.nextChunk;
    if (!Number.isSafeInteger(from) || from < 0 || from > this.chunkCount) {
      throw invalidInput(`fromChunk ${from} is outside the volume (0..${this.chunkCount})`);
    }
    const batchChunks = Math.max(1, Math.floor((options.batchBytes ?? 16 * MiB) / chunkSize));
    const inFlight = Math.max(1, options.inFlight ?? 3);
    const batches = Math.ceil((this.chunkCount - from) / batchChunks);
    const doneBatches = new Array<boolean>(batches).fill(false);
    let nextBatch = 0;
    let contiguous = 0; // batches done without a gap, so progress is reported only when it moves
    let failed = false;
    let uploadedHere = 0;

    const lane = async (): Promise<void> => {
      // Taken only if the lender reads: bytes lent in place need no buffer.
      let buffer: Buffer | undefined;
      const scratch = () => (buffer ??= this.store.takeBuffer(batchChunks * chunkSize));
      try {
        await work(scratch);
      } finally {
        if (buffer) this.store.giveBackBuffer(buffer);
      }
    };
    const work = async (scratch: () => Buffer): Promise<void> => {
      while (!failed && nextBatch < batches) {
        const b = nextBatch++;
        const first = from + b * batchChunks;
        const count = Math.min(batchChunks, this.chunkCount - first);
        if (!this.allKnown(first, count)) {
          const bytes = Math.min(sizeBytes, (first + count) * chunkSize) - first * chunkSize;
          await lend(first * chunkSize, bytes, scratch, async (batch) => {
            const uploaded = await this.putBlocks(first, batch); // not `+= await`: lanes interleave
            uploadedHere += uploaded;
          });
        }
        doneBatches[b] = true;
        let advanced = false;
        while (contiguous < batches && doneBatches[contiguous]) {
          contiguous++;
          advanced = true;
        }
        if (advanced && options.onProgress) {
          const progress = {
            nextChunk: this.nextChunk,
            chunkCount: this.chunkCount,
            bytesUploaded: this.bytesUploaded,
          };
          await options.onProgress(progress);
        }
      }
    };
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(inFlight, Math.max(1, batches)) }, () =>
        lane().catch((err: unknown) => {
          failed = true;
          throw err;
        }),
      ),
    );
    const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (rejected) throw rejected.reason;
    return uploadedHere;
  }

  /**
   * Writes the manifest: the snapshot exists from here on. Idempotent: committing a snapshot that
   * is already committed (this attempt or an earlier one) returns it again.
   */
  async commit(): Promise<SnapshotInfo> {
    if (this.state === 'committed' && this.manifest) return toInfo(this.manifest);
    this.assertOpen();
    const missing = this.nextChunk;
    if (missing < this.chunkCount) {
      // Retryable: a retry reopens the upload and resumes at writer.nextChunk.
      throw new Error(
        `snapshot ${this.meta.snapshotId} is incomplete: chunk ${missing} of ${this.chunkCount} was never stored; resume the upload at writer.nextChunk (${missing})`,
      );
    }
    const index = this.store.indexFor(this.meta.account);
    const lost = this.hashes.findIndex((h) => !index.has(h!));
    if (lost >= 0) {
      this.forgetMissing(index);
      throw new Error(
        `snapshot ${this.meta.snapshotId} chunk ${lost} is no longer stored; resume the upload at writer.nextChunk (${this.nextChunk})`,
      );
    }
    const manifest: SnapshotManifest = {
      snapshotId: this.meta.snapshotId,
      account: this.meta.account,
      instanceId: this.meta.instanceId,
      volumeId: this.meta.volumeId,
      sizeBytes: this.meta.sizeBytes,
      blockSize: this.meta.blockSize,
      chunkSize: this.meta.chunkSize,
      chunkCount: this.chunkCount,
      hashAlgorithm: SNAPSHOT_HASH_ALGORITHM,
      sourceEvent: this.meta.sourceEvent,
      createdAt: this.meta.createdAt,
      bytesUploaded: this.uploaded,
      bytesTotal: this.meta.sizeBytes,
      chunks: this.hashes as string[],
    };
    this.manifest = await this.store.commitManifest(manifest);
    this.state = 'committed';
    return toInfo(this.manifest);
  }

  /**
   * Gives the upload up: its journal and lock go, its snapshot id is free again, and chunks only
   * it stored become garbage for gc. Idempotent; does nothing to a committed snapshot.
   */
  async abort(): Promise<void> {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    await this.store.abandonUpload(this.meta.account, this.meta.snapshotId);
  }

  private assertOpen(): void {
    if (this.state !== 'open') {
      throw invalidState(`the upload of snapshot ${this.meta.snapshotId} was ${this.state}: open it again`);
    }
  }

  private allKnown(first: number, count: number): boolean {
    for (let i = first; i < first + count; i++) if (this.hashes[i] === undefined) return false;
    return true;
  }

  /** Keeps the upload lock fresh so a GC elsewhere does not take this upload for abandoned. */
  private async refreshLock(): Promise<void> {
    if (Date.now() - this.lastRefresh < 30_000) return;
    this.lastRefresh = Date.now();
    await this.store.locks.refreshUpload(this.meta.account, this.meta.snapshotId);
  }
}

/** What putBlocks stored of a batch: every chunk's hash, and the bytes that were new. */
interface Stored {
  hashes: string[];
  bytesUploaded: number;
}

function hexHashes(digests: Buffer): string[] {
  return Array.from({ length: digests.length / HASH_BYTES }, (_, i) =>
    digests.toString('hex', i * HASH_BYTES, (i + 1) * HASH_BYTES),
  );
}

/** Chunk i of a buffer of whole chunks (the last may be short). */
function chunkOf(data: Buffer, i: number, chunkSize: number): Buffer {
  return data.subarray(i * chunkSize, Math.min(data.length, (i + 1) * chunkSize));
}

function chunkRange(range: FileRange, i: number, chunkSize: number): FileRange {
  return subRange(range, i * chunkSize, Math.min(range.length, (i + 1) * chunkSize) - i * chunkSize);
}

/**
 * Bytes [offset, offset + length) of a lent range as of the capture's instant: read, then the
 * overrides laid over them. In that order: a write to a lent block lands only once the block's
 * override is in place, so whatever the read saw of such a write, an override covers it.
 */
async function readLent({ range, overrides }: PatchedRange, offset: number, length: number): Promise<Buffer> {
  const data = await readFileRange(subRange(range, offset, length));
  for (const [at, old] of overrides) {
    const from = Math.max(at, offset);
    const to = Math.min(at + old.length, offset + length);
    if (from < to) old.copy(data, from - offset, from - at, to - at);
  }
  return data;
}

/** Chunk i of a lent range, as of the instant (see readLent). */
function readLentChunk(lent: PatchedRange, i: number, chunkSize: number): Promise<Buffer> {
  return readLent(lent, i * chunkSize, chunkRange(lent.range, i, chunkSize).length);
}

/** The chunks of a lent range that overrides touch, as of the instant (see readLent). */
async function patchChunks(lent: PatchedRange, chunkSize: number): Promise<Map<number, Buffer>> {
  const patched = new Map<number, Buffer>();
  // The live map: overrides that writes add while this reads are visited too.
  for (const offset of lent.overrides.keys()) {
    const i = Math.floor(offset / chunkSize);
    if (!patched.has(i)) {
      patched.set(i, await readLentChunk(lent, i, chunkSize));
    }
  }
  return patched;
}

/** [first, count] for each run of consecutive numbers in an increasing list. */
function runsOf(sorted: number[]): [number, number][] {
  const out: [number, number][] = [];
  for (const n of sorted) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === n) last[1]++;
    else out.push([n, 1]);
  }
  return out;
}

/** Joins adjacent views of one buffer (a run of new chunks from one batch) into one, without copying. */
function coalesce(parts: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  for (const p of parts) {
    const last = out[out.length - 1];
    if (last && last.buffer === p.buffer && last.byteOffset + last.length === p.byteOffset) {
      out[out.length - 1] = Buffer.from(p.buffer, last.byteOffset, last.length + p.length);
    } else {
      out.push(p);
    }
  }
  return out;
}

async function readFully(read: ReadAt, position: number, target: Buffer): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const n = await read(position + done, target.subarray(done));
    if (n <= 0) {
      throw invalidInput(
        `the volume ended at byte ${position + done}, before the ${position + target.length} bytes the snapshot covers`,
      );
    }
    done += n;
  }
}

function validateUploadMeta(input: SnapshotUploadMeta): Meta {
  const o = assertObject('snapshot', input);
  const meta = {
    snapshotId: assertId('snapshotId', o.snapshotId),
    account: assertId('account', o.account),
    instanceId: assertId('instanceId', o.instanceId),
    volumeId: assertId('volumeId', o.volumeId),
    sizeBytes: o.sizeBytes as number,
    blockSize: o.blockSize as number,
    chunkSize: (o.chunkSize ?? o.blockSize) as number,
    sourceEvent: o.sourceEvent as string,
    createdAt: o.createdAt as string,
  };
  const sized = (v: unknown) => Number.isSafeInteger(v) && (v as number) > 0;
  if (!sized(meta.sizeBytes) || meta.sizeBytes > MAX_VOLUME_BYTES || meta.sizeBytes % SECTOR_SIZE !== 0) {
    throw invalidInput(
      `sizeBytes ${String(meta.sizeBytes)} is not a volume size: give a whole number of ${SECTOR_SIZE}-byte sectors, at most ${MAX_VOLUME_BYTES}`,
    );
  }
  for (const field of ['blockSize', 'chunkSize'] as const) {
    const v = meta[field];
    if (!sized(v) || v % SECTOR_SIZE !== 0 || v < MIN_CHUNK || v > MAX_CHUNK) {
      throw invalidInput(
        `${field} ${String(v)} is not valid: give a multiple of ${SECTOR_SIZE} between ${MIN_CHUNK} and ${MAX_CHUNK} (e.g. 65536)`,
      );
    }
  }
  if (typeof meta.sourceEvent !== 'string' || !SOURCE_EVENT.test(meta.sourceEvent)) {
    throw invalidInput(
      `sourceEvent ${JSON.stringify(String(meta.sourceEvent).slice(0, 80))} is not valid: use e.g. "manual" or "migration:m-42" (letters, digits and :._/-)`,
    );
  }
  const t = typeof meta.createdAt === 'string' ? new Date(meta.createdAt) : undefined;
  if (!t || Number.isNaN(t.getTime()) || t.toISOString() !== meta.createdAt) {
    throw invalidInput(
      `createdAt ${JSON.stringify(String(meta.createdAt).slice(0, 80))} is not an ISO 8601 UTC time like "2025-01-31T12:00:00.000Z"`,
    );
  }
  return meta;
}

/** A retried open must describe the same snapshot as the first one. */
function assertSameSnapshot(existing: Omit<Meta, 'chunkSize'> & { chunkSize: number }, meta: Meta): void {
  for (const field of ['instanceId', 'volumeId', 'sizeBytes', 'blockSize', 'chunkSize'] as const) {
    if (existing[field] !== meta[field]) {
      throw invalidInput(
        `snapshot ${meta.snapshotId} already exists with ${field} ${existing[field]}, not ${meta[field]}: use another snapshot id`,
      );
    }
  }
}

function assertChunkRange(manifest: SnapshotInfo, first: number, count: number): void {
  if (
    !Number.isSafeInteger(first) ||
    !Number.isSafeInteger(count) ||
    first < 0 ||
    count < 0 ||
    first + count > manifest.chunkCount
  ) {
    throw invalidInput(
      `chunks ${first}..${first + count - 1} are outside snapshot ${manifest.snapshotId}, which has chunks 0..${manifest.chunkCount - 1}`,
    );
  }
}

function toInfo(manifest: SnapshotManifest): SnapshotInfo {
  // eslint-disable-next-line @typescript-eslint/no-unused-vars
  const { chunks, ...info } = manifest;
  return info;
}

function newestFirst(a: SnapshotInfo, b: SnapshotInfo): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? 1 : -1;
  return a.snapshotId < b.snapshotId ? 1 : a.snapshotId > b.snapshotId ? -1 : 0;
}
