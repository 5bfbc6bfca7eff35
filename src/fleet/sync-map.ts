import { writeSync } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { invalidState } from '../contracts';
import { writeFileAtomic } from './atomic-file';
import type { SyncCounters } from './host-store';
import { readFully } from './volume';

/**
 * What the target replica holds of each block. Persisted as one byte per block after a small header.
 * A regular (not const) enum so transpile-only builds (ts-jest, ts-node) see the values too.
 */
export enum BlockState {
  /** Not on the target yet: reads fetch it from the source; the background copy will. */
  Missing = 0,
  /** Copied from the source (background copy or read-through); verify compares it with the source. */
  Copied = 1,
  /** Written by the workload on the target: the target's data wins, nothing ever copies over it. */
  Written = 2,
  /** The background copy was writing it. After a crash it counts as Missing and its re-copy as recopied. */
  Copying = 3,
}

const MAGIC = 'RHSYNC01';
export const SYNC_MAP_HEADER_BYTES = 64;
const OFF_BLOCK_COUNT = 8;
const OFF_BLOCK_SIZE = 16;
const OFF_COUNTERS = 24;

function encodeHeader(blockCount: number, blockSize: number, c: SyncCounters): Buffer {
  const header = Buffer.alloc(SYNC_MAP_HEADER_BYTES);
  header.write(MAGIC, 0, 'latin1');
  header.writeDoubleLE(blockCount, OFF_BLOCK_COUNT);
  header.writeDoubleLE(blockSize, OFF_BLOCK_SIZE);
  header.writeDoubleLE(c.bytesCopied, OFF_COUNTERS);
  header.writeDoubleLE(c.bytesReadThrough, OFF_COUNTERS + 8);
  header.writeDoubleLE(c.bytesRecopied, OFF_COUNTERS + 16);
  return header;
}

/**
 * The block map of a replica, held in memory and persisted with small pwrites.
 *
 * Rule that makes it crash safe: the in-memory state of a block is only ever one that is safe to find
 * on disk after a SIGKILL (Copied/Written are set once the data is in the image; Written for a block
 * already present is set before the data, since the old data is a valid pre-write state; Copying is
 * set before the copy writes). Every update writes the memory state of its range synchronously, before
 * it returns, so the file equals memory between calls and an older state can never land after a newer
 * one (no write is ever in flight).
 */
export class SyncMap {
  /** Blocks that were Copying when the map was opened: the copy may have written them once already. */
  readonly interrupted = new Set<number>();
  private readonly counts = [0, 0, 0, 0];
  private readonly totals: SyncCounters;
  private closed = false;

  private constructor(
    readonly file: string,
    readonly blockCount: number,
    readonly blockSize: number,
    private readonly fh: FileHandle,
    private readonly states: Buffer,
    counters: SyncCounters,
  ) {
    this.totals = { ...counters };
    for (let i = 0; i < states.length; i++) {
      if (states[i] === BlockState.Copying) {
        states[i] = BlockState.Missing;
        this.interrupted.add(i);
      }
      const s = states[i];
      if (s > BlockState.Copying) throw invalidState(`sync map ${file}: block ${i} has unknown state ${s}`);
      this.counts[s]++;
    }
  }

  /** Writes a map of all-Missing blocks atomically (temp + rename). */
  static async create(file: string, blockCount: number, blockSize: number): Promise<void> {
    const zero: SyncCounters = { bytesCopied: 0, bytesReadThrough: 0, bytesRecopied: 0 };
    await writeFileAtomic(
      file,
      Buffer.concat([encodeHeader(blockCount, blockSize, zero), Buffer.alloc(blockCount)]),
    );
  }

  static async open(file: string): Promise<SyncMap> {
    const fh = await open(file, 'r+');
    try {
      const { size } = await fh.stat();
      if (size < SYNC_MAP_HEADER_BYTES) throw invalidState(`sync map ${file} is truncated (${size} bytes)`);
      const header = Buffer.alloc(SYNC_MAP_HEADER_BYTES);
      await readFully(fh, header, 0);
      if (header.toString('latin1', 0, MAGIC.length) !== MAGIC)
        throw invalidState(`${file} is not a sync map`);
      const blockCount = header.readDoubleLE(OFF_BLOCK_COUNT);
      const blockSize = header.readDoubleLE(OFF_BLOCK_SIZE);
      if (size !== SYNC_MAP_HEADER_BYTES + blockCount) {
        throw invalidState(
          `sync map ${file} has ${size - SYNC_MAP_HEADER_BYTES} entries for ${blockCount} blocks`,
        );
      }
      const states = Buffer.alloc(blockCount);
      await readFully(fh, states, SYNC_MAP_HEADER_BYTES);
      const counters: SyncCounters = {
        bytesCopied: header.readDoubleLE(OFF_COUNTERS),
        bytesReadThrough: header.readDoubleLE(OFF_COUNTERS + 8),
        bytesRecopied: header.readDoubleLE(OFF_COUNTERS + 16),
      };
      return new SyncMap(file, blockCount, blockSize, fh, states, counters);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  static async remove(file: string): Promise<void> {
    await rm(file, { force: true });
  }

  get(i: number): BlockState {
    return this.states[i] as BlockState;
  }

  countIn(state: BlockState): number {
    return this.counts[state];
  }

  /** First block at or after `from` in `state`, or -1. */
  findNext(state: BlockState, from: number): number {
    if (from >= this.blockCount) return -1;
    return this.states.indexOf(state, from);
  }

  /** True when every block in [first, first + count) is Copied or Written. */
  allPresent(first: number, count: number): boolean {
    for (let i = first; i < first + count; i++) {
      const s = this.states[i];
      if (s !== BlockState.Copied && s !== BlockState.Written) return false;
    }
    return true;
  }

  /** Sets the memory state now; the promise resolves once it is in the file. */
  setRange(first: number, count: number, state: BlockState): Promise<void> {
    for (let i = first; i < first + count; i++) this.assign(i, state);
    return this.persist(first, count);
  }

  /** Several blocks, persisted with one pwrite covering them all. */
  setBlocks(blocks: readonly number[], state: BlockState): Promise<void> {
    if (blocks.length === 0) return Promise.resolve();
    let lo = blocks[0];
    let hi = blocks[0];
    for (const i of blocks) {
      this.assign(i, state);
      lo = Math.min(lo, i);
      hi = Math.max(hi, i);
    }
    return this.persist(lo, hi - lo + 1);
  }

  counters(): SyncCounters {
    return { ...this.totals };
  }

  addCounters(delta: Partial<SyncCounters>): Promise<void> {
    this.totals.bytesCopied += delta.bytesCopied ?? 0;
    this.totals.bytesReadThrough += delta.bytesReadThrough ?? 0;
    this.totals.bytesRecopied += delta.bytesRecopied ?? 0;
    return this.writeNow(encodeHeader(this.blockCount, this.blockSize, this.totals), 0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }

  private assign(i: number, state: BlockState): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.blockCount) {
      throw new RangeError(`block ${i} outside sync map of ${this.blockCount} blocks`);
    }
    if (this.closed) throw invalidState(`sync map ${this.file} is closed`);
    this.counts[this.states[i]]--;
    this.states[i] = state;
    this.counts[state]++;
  }

  /** Writes the memory state of [first, first + count) to the file, now. */
  private persist(first: number, count: number): Promise<void> {
    return this.writeNow(this.states.subarray(first, first + count), SYNC_MAP_HEADER_BYTES + first);
  }

  /**
   * One pwrite of a few bytes into a page the cache holds anyway: microseconds, so it is synchronous.
   * Asynchronous, it would queue in libuv's threadpool behind multi-MiB image reads and writes and
   * hold up the copy, which must see its Copying marks in the file before writing data.
   */
  private writeNow(bytes: Buffer, position: number): Promise<void> {
    try {
      for (let done = 0; done < bytes.length;) {
        done += writeSync(this.fh.fd, bytes, done, bytes.length - done, position + done);
      }
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }
}
