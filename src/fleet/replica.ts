import { open, type FileHandle } from 'node:fs/promises';
import { blockCountOf, dataIntegrity, invalidInput, invalidState, notFound } from '../contracts';
import type { BlockDevice } from './block-device';
import type { BlockSource } from './block-source';
import { transferHash } from './hashing';
import {
  checkVolumeMeta,
  pickMeta,
  sameMeta,
  type HostStore,
  type SyncCounters,
  type VolumeMeta,
} from './host-store';
import { RangeLock } from './range-lock';
import { BlockState, SyncMap } from './sync-map';
import { bufferFor, checkByteRange, rangeBytes, readFully, writeFully } from './volume';

export interface CopyOptions {
  /** Block to start looking at (the last heartbeated cursor); the copy wraps around to pick up earlier gaps. */
  startBlock?: number;
  /** Stop starting new chunks at this wall-clock time (epoch ms, as Date.now()). */
  deadlineMs?: number;
  /** Stop starting new chunks this many ms after the call (whichever of the two comes first). */
  maxMs?: number;
  /** Rate limit in bytes/s, 0 = unlimited; re-read before every chunk so a change applies at once. */
  bandwidth?: () => number;
  /** Blocks per chunk (default 64); under a rate limit chunks shrink to about 250 ms of bandwidth. */
  chunkBlocks?: number;
  signal?: AbortSignal;
  /** Called after each chunk is durable (data and map): heartbeat `cursor` from here. */
  onChunk?: (p: CopyProgress) => void;
}

export interface CopyProgress {
  /** Next block to look at: pass it back as startBlock to resume. */
  cursor: number;
  /** Blocks Copied or Written. */
  blocksDone: number;
  blocksTotal: number;
  /** Bytes the background copy wrote during this call. */
  bytesCopied: number;
  done: boolean;
}

export interface VerifyReport {
  blocksVerified: number;
  blocksWrittenOnTarget: number;
  mismatchedBlocks: number[];
}

export const DEFAULT_CHUNK_BLOCKS = 64;
/**
 * Chunk size when the source copies inside the kernel: no buffer holds the bytes, so a chunk can be
 * larger, and fewer chunks mean fewer map writes and lock round trips (a fifth of a 512 MiB sync's
 * time at 4 MiB chunks). A kill still re-copies at most one chunk.
 */
const KERNEL_CHUNK_BYTES = 32 * 1024 * 1024;

/** Blocks per chunk of the background copy by default: what a kill re-copies at most. */
export function copyChunkBlocks(blockSize: number, kernelCopy: boolean): number {
  return kernelCopy
    ? Math.max(DEFAULT_CHUNK_BLOCKS, Math.floor(KERNEL_CHUNK_BYTES / blockSize))
    : DEFAULT_CHUNK_BLOCKS;
}
const TRANSFER_ATTEMPTS = 3;
/** Chunks written concurrently (disjoint ranges), so the disk never idles during map updates. */
const STORE_WINDOW = 2;
/** Chunks read ahead of those being written when the copy is not rate limited. */
const PREFETCH = 2;
const PACED_CHUNK_SECONDS = 0.25;

/** A chunk the background copy has claimed: its range lock is held until it is stored or given back. */
interface Chunk {
  first: number;
  count: number;
  /** Blocks that were Missing when claimed: the ones this chunk writes. */
  claimed: number[];
  release: () => void;
  /** The fetched blocks; none when the source copies them into the image itself (copyBlocksInto). */
  data?: Promise<Buffer>;
  /** Set once the chunk enters the store window: bytes written. */
  stored?: Promise<number>;
}

/** Spaces chunk starts so the copy averages the current bandwidth; a changed rate starts a new epoch. */
class Pacer {
  private rate = -1;
  private since = 0;
  private sent = 0;

  constructor(private readonly bandwidth?: () => number) {}

  current(): number {
    const r = this.bandwidth?.() ?? 0;
    return Number.isFinite(r) && r > 0 ? r : 0;
  }

  /** Waits until `bytes` may go; false if `stop()` turned true first. */
  async admit(bytes: number, stop: () => boolean, signal?: AbortSignal): Promise<boolean> {
    for (;;) {
      const rate = this.current();
      if (rate !== this.rate) {
        this.rate = rate;
        this.since = Date.now();
        this.sent = 0;
      }
      const due = rate === 0 ? 0 : this.since + (this.sent / rate) * 1000;
      const now = Date.now();
      if (now >= due) {
        this.sent += bytes;
        return true;
      }
      if (stop()) return false;
      // Short naps so a bandwidth change or a deadline is noticed promptly.
      await sleep(Math.min(due - now, 100), signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done);
  });
}

/** Replicas open in this process: two instances over one map would each lock only themselves. */
const openReplicas = new Set<string>();

/**
 * The target replica during a post-sync: the target is primary (the workload reads and writes it),
 * the source is secondary (blocks the target lacks are fetched from it). Block states live in a
 * SyncMap next to the image; see sync-map.ts for the crash-safety rule.
 */
export class ReplicaVolume implements BlockDevice {
  readonly volumeId: string;
  readonly sizeBytes: number;
  readonly blockSize: number;
  readonly blockCount: number;
  private readonly lock = new RangeLock();
  private readonly copies = new Set<Promise<unknown>>();
  private closed = false;
  private finalized = false;
  /** The source can copy into our image inside the kernel; cleared the first time that fails. */
  private kernelCopy: boolean;

  private constructor(
    private readonly store: HostStore,
    private readonly meta: VolumeMeta,
    private readonly fh: FileHandle,
    private readonly map: SyncMap,
    private readonly source: BlockSource,
  ) {
    this.volumeId = meta.volumeId;
    this.sizeBytes = meta.sizeBytes;
    this.blockSize = meta.blockSize;
    this.blockCount = blockCountOf(meta);
    this.kernelCopy = typeof source.copyBlocksInto === 'function';
  }

  /** Sparse image + all-Missing map + sidecar (last). Idempotent for the same meta. */
  static async create(store: HostStore, meta: VolumeMeta): Promise<void> {
    checkVolumeMeta(meta);
    const existing = store.readSidecar(meta.volumeId);
    if (existing) {
      if (existing.replica && sameMeta(existing, meta)) return;
      throw invalidState(
        `volume ${meta.volumeId} already exists on host ${store.hostId}${existing.replica ? ' as a replica of another shape' : ''}: delete it before creating a replica`,
      );
    }
    await store.ensureDir();
    const fh = await open(store.imagePath(meta.volumeId), 'w');
    try {
      await fh.truncate(meta.sizeBytes);
    } finally {
      await fh.close();
    }
    await SyncMap.create(store.mapPath(meta.volumeId), blockCountOf(meta), meta.blockSize);
    await store.writeSidecar({ format: 1, ...meta, replica: true });
  }

  static isReplica(store: HostStore, volumeId: string): boolean {
    return store.readSidecar(volumeId)?.replica === true;
  }

  /** Opens the replica as left on disk; blocks found Copying (a crash mid-chunk) count as Missing. */
  static async open(store: HostStore, volumeId: string, source: BlockSource): Promise<ReplicaVolume> {
    const sidecar = store.readSidecar(volumeId);
    if (!sidecar) throw notFound(`volume ${volumeId} does not exist on host ${store.hostId}`);
    if (!sidecar.replica)
      throw invalidState(`volume ${volumeId} on host ${store.hostId} is not a replica being synchronised`);
    const imagePath = store.imagePath(volumeId);
    if (openReplicas.has(imagePath)) {
      throw invalidState(
        `replica ${volumeId} on host ${store.hostId} is already open in this process: share that instance`,
      );
    }
    openReplicas.add(imagePath);
    let map: SyncMap | undefined;
    let fh: FileHandle | undefined;
    try {
      map = await SyncMap.open(store.mapPath(volumeId));
      if (map.blockCount !== blockCountOf(sidecar) || map.blockSize !== sidecar.blockSize) {
        throw invalidState(
          `replica ${volumeId} on host ${store.hostId}: its sync map does not match its size`,
        );
      }
      fh = await open(imagePath, 'r+');
      const { size } = await fh.stat();
      if (size !== sidecar.sizeBytes) {
        throw invalidState(
          `replica ${volumeId} on host ${store.hostId}: image is ${size} bytes, expected ${sidecar.sizeBytes}`,
        );
      }
      return new ReplicaVolume(store, pickMeta(sidecar), fh, map, source);
    } catch (err) {
      openReplicas.delete(imagePath);
      await map?.close();
      await fh?.close();
      throw err;
    }
  }

  blockState(block: number): BlockState {
    return this.map.get(block);
  }

  progress(): { blocksDone: number; blocksTotal: number; blocksMissing: number } {
    const blocksDone = this.map.countIn(BlockState.Copied) + this.map.countIn(BlockState.Written);
    return { blocksDone, blocksTotal: this.blockCount, blocksMissing: this.blockCount - blocksDone };
  }

  /** Blocks the target does not hold yet (Missing, or Copying by a copy in flight), in order. */
  missingBlocks(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.blockCount; i++) {
      const s = this.map.get(i);
      if (s === BlockState.Missing || s === BlockState.Copying) out.push(i);
    }
    return out;
  }

  /** Cumulative over the replica's life (persisted in the map header, then in the sidecar). */
  counters(): SyncCounters {
    return this.map.counters();
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.checkOpen();
    checkByteRange(this, 'read', offset, length);
    const out = bufferFor(length, into);
    if (length === 0) return out;
    const b0 = Math.floor(offset / this.blockSize);
    const b1 = Math.floor((offset + length - 1) / this.blockSize);
    if (!this.map.allPresent(b0, b1 - b0 + 1)) await this.readThrough(b0, b1);
    await readFully(this.fh, out, offset);
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkOpen();
    checkByteRange(this, 'write', offset, data.length);
    if (data.length === 0) return;
    const b0 = Math.floor(offset / this.blockSize);
    const b1 = Math.floor((offset + data.length - 1) / this.blockSize);
    if (this.finalized) return writeFully(this.fh, data, offset);
    if (this.map.allPresent(b0, b1 - b0 + 1)) {
      // Present blocks: the copy never touches them, so no lock. Mark Written before the data lands:
      // after a crash in between, the old content is a valid pre-write state and stays ours.
      await this.map.setBlocks(this.blocksIn(b0, b1, BlockState.Copied), BlockState.Written);
      await writeFully(this.fh, data, offset);
      return;
    }
    const release = await this.lock.acquire(b0, b1);
    try {
      let fetched = 0;
      let recopied = 0;
      for (const edge of b0 === b1 ? [b0] : [b0, b1]) {
        if (this.map.get(edge) !== BlockState.Missing || this.covers(offset, data.length, edge)) continue;
        const around = await this.fetch(edge, 1);
        await writeFully(this.fh, around, edge * this.blockSize);
        fetched += around.length;
        if (this.map.interrupted.delete(edge)) recopied += around.length;
      }
      const missing = this.blocksIn(b0, b1, BlockState.Missing);
      await this.map.setBlocks(this.blocksIn(b0, b1, BlockState.Copied), BlockState.Written);
      await writeFully(this.fh, data, offset);
      // Missing blocks become Written only now that their data is in the image.
      for (const i of missing) this.map.interrupted.delete(i);
      await Promise.all([
        this.map.setBlocks(missing, BlockState.Written),
        fetched > 0
          ? this.map.addCounters({ bytesReadThrough: fetched, bytesRecopied: recopied })
          : undefined,
      ]);
    } finally {
      release();
    }
  }

  /** Background copy of Missing blocks; see CopyOptions. Returns where it stopped. */
  async copy(opts: CopyOptions = {}): Promise<CopyProgress> {
    this.checkOpen();
    const run = this.runCopy(opts);
    this.copies.add(run);
    try {
      return await run;
    } finally {
      this.copies.delete(run);
    }
  }

  /**
   * Compares every Copied block with the source by hash (Written blocks are the target's own and
   * skipped). Mismatches are set back to Missing, so the next copy pass fetches them again.
   */
  async verify(): Promise<VerifyReport> {
    this.checkOpen();
    if (this.finalized) throw invalidState(`replica ${this.volumeId} is already finalized`);
    const chunk = DEFAULT_CHUNK_BLOCKS;
    let blocksVerified = 0;
    const mismatched: number[] = [];
    for (let first = 0; first < this.blockCount; first += chunk) {
      const count = Math.min(chunk, this.blockCount - first);
      const before = this.blocksIn(first, first + count - 1, BlockState.Copied);
      if (before.length === 0) continue;
      const target = Buffer.allocUnsafe(rangeBytes(this, first, count));
      const [hashes] = await Promise.all([
        this.source.hashBlocks(this.volumeId, first, count),
        readFully(this.fh, target, first * this.blockSize),
      ]);
      if (hashes.length !== count) {
        throw dataIntegrity(
          `verify of volume ${this.volumeId}: host ${this.source.hostId} returned ${hashes.length} hashes for ${count} blocks`,
        );
      }
      for (const i of before) {
        // Only blocks Copied both before and after the read: a write since then made it the target's.
        if (this.map.get(i) !== BlockState.Copied) continue;
        blocksVerified++;
        const at = (i - first) * this.blockSize;
        if (transferHash(target.subarray(at, at + this.blockSize)) !== hashes[i - first]) mismatched.push(i);
      }
    }
    // Check and reset with no await in between, so a concurrent write's Written is never undone.
    const reset = mismatched.filter((i) => this.map.get(i) === BlockState.Copied);
    for (const i of reset) this.map.interrupted.add(i);
    await this.map.setBlocks(reset, BlockState.Missing);
    return {
      blocksVerified,
      blocksWrittenOnTarget: this.map.countIn(BlockState.Written),
      mismatchedBlocks: mismatched,
    };
  }

  /** All blocks present: the sidecar stops saying replica (keeping the counters), then the map goes. */
  async finalize(): Promise<void> {
    this.checkOpen();
    if (this.finalized) return;
    const { blocksMissing } = this.progress();
    if (blocksMissing > 0) {
      throw invalidState(
        `replica ${this.volumeId} on host ${this.store.hostId} still lacks ${blocksMissing} blocks: finish the sync (and verify) before finalizing`,
      );
    }
    await this.store.writeSidecar({ format: 1, ...this.meta, sync: this.map.counters() });
    this.finalized = true;
    await this.map.close();
    await SyncMap.remove(this.store.mapPath(this.volumeId));
  }

  /** Stops running copies at their next chunk and closes the image and map (not the source). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.copies]);
    await this.map.close();
    await this.fh.close();
    openReplicas.delete(this.store.imagePath(this.volumeId));
  }

  private async runCopy(opts: CopyOptions): Promise<CopyProgress> {
    const chunkBlocks = opts.chunkBlocks ?? copyChunkBlocks(this.blockSize, this.kernelCopy);
    if (!Number.isSafeInteger(chunkBlocks) || chunkBlocks < 1)
      throw invalidInput(`chunkBlocks must be a positive integer`);
    const start = opts.startBlock ?? 0;
    if (!Number.isSafeInteger(start) || start < 0)
      throw invalidInput(`startBlock must be a non-negative integer`);
    const deadline = Math.min(
      opts.deadlineMs ?? Infinity,
      opts.maxMs !== undefined ? Date.now() + opts.maxMs : Infinity,
    );
    const pacer = new Pacer(opts.bandwidth);
    // Claimed chunks in copy order: the first STORE_WINDOW are being written (or wait for their data),
    // the rest are being read ahead. Results are taken in order, so `cursor` only passes durable chunks.
    const pipeline: Chunk[] = [];
    let planned = 0;
    let stopping = false;
    let scan = start % this.blockCount;
    let cursor = scan;
    let bytesCopied = 0;
    // Data writes run one at a time: concurrent writes to one file only contend for its inode lock.
    let lastWrite: Promise<void> = Promise.resolve();
    // Always make some progress per call, even if the deadline has passed already.
    const stop = () =>
      this.closed ||
      this.finalized ||
      opts.signal?.aborted === true ||
      (planned > 0 && Date.now() >= deadline);

    const progress = (): CopyProgress => {
      const { blocksDone, blocksTotal } = this.progress();
      return { cursor, blocksDone, blocksTotal, bytesCopied, done: this.isComplete() };
    };

    try {
      for (;;) {
        while (!stopping) {
          const rate = pacer.current();
          // Under a rate limit chunks are small and one at a time; unlimited, keep the disk busy.
          if (pipeline.length >= (rate > 0 ? 1 : STORE_WINDOW + PREFETCH)) break;
          if (stop()) {
            stopping = true;
            break;
          }
          // Wrap around only once nothing is in flight, so a chunk is never planned twice.
          if (pipeline.length === 0 && this.map.findNext(BlockState.Missing, scan) < 0) scan = 0;
          const paced =
            rate > 0 ? Math.max(1, Math.floor((rate * PACED_CHUNK_SECONDS) / this.blockSize)) : chunkBlocks;
          const next = this.planChunk(scan, Math.min(chunkBlocks, paced));
          if (!next) break;
          if (!(await pacer.admit(rangeBytes(this, next.first, next.count), stop, opts.signal))) {
            stopping = true;
            break;
          }
          const chunk = await this.claim(next.first, next.count, pipeline.length === 0);
          if (!chunk) break; // busy with a workload request: store what we have, then try again
          scan = next.first + next.count;
          if (chunk.claimed.length === 0) {
            chunk.release();
            continue;
          }
          pipeline.push(chunk);
          planned++;
        }
        for (const chunk of pipeline.slice(0, STORE_WINDOW)) {
          if (chunk.stored) continue;
          const previous = lastWrite;
          let wrote!: () => void;
          lastWrite = new Promise<void>((resolve) => (wrote = resolve));
          chunk.stored = this.storeChunk(chunk, previous, wrote);
          chunk.stored.catch(() => undefined); // awaited in order below
        }
        const head = pipeline.shift();
        if (!head) break;
        bytesCopied += await head.stored!;
        cursor = (head.first + head.count) % this.blockCount;
        opts.onChunk?.(progress());
      }
    } finally {
      // After a failure: give back the claims not being stored, let the others finish or fail.
      for (const chunk of pipeline) if (!chunk.stored) await this.unclaim(chunk, false);
      await Promise.allSettled(pipeline.map((c) => c.stored));
    }
    return progress();
  }

  /** The next chunk starting at a Missing block at or after `from`, trimmed to its last Missing block. */
  private planChunk(from: number, maxBlocks: number): { first: number; count: number } | undefined {
    const first = this.map.findNext(BlockState.Missing, from);
    if (first < 0) return undefined;
    let last = Math.min(first + maxBlocks, this.blockCount) - 1;
    while (last > first && this.map.get(last) !== BlockState.Missing) last--;
    return { first, count: last - first + 1 };
  }

  /**
   * Takes the chunk's range lock and starts fetching its Missing blocks. The lock is what reserves
   * them (their state stays Missing until the chunk is stored): a workload request for one of them
   * waits until the copy has written it. Only waits for the lock when the copy holds no other lock
   * (`mayWait`), so it can never wait on a request that itself waits on the copy.
   */
  private async claim(first: number, count: number, mayWait: boolean): Promise<Chunk | undefined> {
    const last = first + count - 1;
    const release =
      this.lock.tryAcquire(first, last) ?? (mayWait ? await this.lock.acquire(first, last) : undefined);
    if (!release) return undefined;
    const claimed = this.blocksIn(first, last, BlockState.Missing);
    const chunk: Chunk = { first, count, claimed, release };
    if (claimed.length === 0 || this.kernelCopy) return chunk;
    chunk.data = this.fetch(first, count);
    chunk.data.catch(() => undefined); // awaited by storeChunk()
    return chunk;
  }

  /**
   * Writes a claimed chunk: once the previous chunk's data is written (`after`), its blocks are marked
   * Copying in the map, then the data, then Copied. So at any instant at most one chunk is Copying,
   * and a crash makes the copy write at most one chunk twice (the map write is a synchronous pwrite
   * of a few bytes: marking earlier, overlapped with the previous chunk, would buy nothing and double
   * that bound). Calls `wrote` once its data is written or it failed. Releases the lock.
   */
  private async storeChunk(chunk: Chunk, after: Promise<void>, wrote: () => void): Promise<number> {
    const { first, claimed } = chunk;
    let written = false;
    try {
      const [data] = await Promise.all([chunk.data, after]);
      await this.map.setBlocks(claimed, BlockState.Copying);
      let bytes = 0;
      for (let r = 0; r < claimed.length;) {
        let end = r + 1;
        while (end < claimed.length && claimed[end] === claimed[end - 1] + 1) end++;
        const runFirst = claimed[r];
        const at = (runFirst - first) * this.blockSize;
        written = true;
        bytes += await this.storeRun(runFirst, end - r, data?.subarray(at));
        r = end;
      }
      wrote();
      let recopied = 0;
      for (const i of claimed) if (this.map.interrupted.delete(i)) recopied += rangeBytes(this, i, 1);
      await Promise.all([
        this.map.setBlocks(claimed, BlockState.Copied),
        this.map.addCounters({ bytesCopied: bytes, bytesRecopied: recopied }),
      ]);
      chunk.release();
      if (data) this.source.recycle?.(data);
      return bytes;
    } catch (err) {
      wrote();
      await this.unclaim(chunk, written);
      throw err;
    }
  }

  /**
   * Puts `count` blocks from `first` into the image: from `data` (fetched and hash-checked) when given,
   * else by the source's in-kernel copy. If that copy fails, the copy fetches through user space from
   * then on, so a kernel that cannot copy between these files costs speed, not the migration.
   */
  private async storeRun(first: number, count: number, data?: Buffer): Promise<number> {
    const length = rangeBytes(this, first, count);
    const position = first * this.blockSize;
    if (!data && this.kernelCopy) {
      try {
        return await this.source.copyBlocksInto!(this.volumeId, first, count, { fd: this.fh.fd, position });
      } catch {
        this.kernelCopy = false;
      }
    }
    await writeFully(this.fh, data ? data.subarray(0, length) : await this.fetch(first, count), position);
    return length;
  }

  /** Gives a chunk back: its Copying blocks become Missing again (counted as re-copies if written). */
  private async unclaim(chunk: Chunk, written: boolean): Promise<void> {
    const back = chunk.claimed.filter((i) => this.map.get(i) === BlockState.Copying);
    if (written) for (const i of back) this.map.interrupted.add(i);
    try {
      await this.map.setBlocks(back, BlockState.Missing);
    } catch {
      // The map is unusable; on reopen, Copying blocks count as Missing anyway.
    } finally {
      chunk.release();
    }
  }

  /** Fetches the Missing blocks of [b0, b1] so a read can be served from the image. */
  private async readThrough(b0: number, b1: number): Promise<void> {
    const release = await this.lock.acquire(b0, b1);
    try {
      for (let i = b0; i <= b1;) {
        if (this.map.get(i) !== BlockState.Missing) {
          i++;
          continue;
        }
        let end = i + 1;
        while (end <= b1 && this.map.get(end) === BlockState.Missing) end++;
        const data = await this.fetch(i, end - i);
        await writeFully(this.fh, data, i * this.blockSize);
        let recopied = 0;
        for (let b = i; b < end; b++) if (this.map.interrupted.delete(b)) recopied += rangeBytes(this, b, 1);
        await Promise.all([
          this.map.setRange(i, end - i, BlockState.Copied),
          this.map.addCounters({ bytesReadThrough: data.length, bytesRecopied: recopied }),
        ]);
        i = end;
      }
    } finally {
      release();
    }
  }

  /** Blocks from the source, hash-checked on arrival; retried, then DataIntegrity naming the blocks. */
  private async fetch(first: number, count: number): Promise<Buffer> {
    const expected = rangeBytes(this, first, count);
    let problem = '';
    for (let attempt = 1; attempt <= TRANSFER_ATTEMPTS; attempt++) {
      const { data, hash } = await this.source.readBlocks(this.volumeId, first, count);
      if (data.length !== expected) {
        problem = `${data.length} bytes arrived, ${expected} expected`;
        continue;
      }
      const actual = transferHash(data);
      if (actual === hash) return data;
      problem = `hash ${actual} arrived, source sent ${hash}`;
    }
    throw dataIntegrity(
      `volume ${this.volumeId}: blocks ${first}-${first + count - 1} from host ${this.source.hostId} failed the transfer check ${TRANSFER_ATTEMPTS} times (${problem}); the source image or the link is corrupting data`,
    );
  }

  private isComplete(): boolean {
    return this.map.countIn(BlockState.Missing) === 0 && this.map.countIn(BlockState.Copying) === 0;
  }

  private blocksIn(b0: number, b1: number, state: BlockState): number[] {
    const out: number[] = [];
    for (let i = b0; i <= b1; i++) if (this.map.get(i) === state) out.push(i);
    return out;
  }

  private covers(offset: number, length: number, block: number): boolean {
    const start = block * this.blockSize;
    return offset <= start && offset + length >= start + rangeBytes(this, block, 1);
  }

  private checkOpen(): void {
    if (this.closed) throw invalidState(`replica ${this.volumeId} on host ${this.store.hostId} is closed`);
  }
}
