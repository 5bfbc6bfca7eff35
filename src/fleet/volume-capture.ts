import { readdir, rm, mkdir, open, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { blockCountOf, invalidInput, invalidState } from '../contracts';
import { isNoEnt, processAlive } from './atomic-file';
import type { BlockDevice } from './block-device';
import type { FileRef, PatchedRange } from './file-range';
import { RangeLock } from './range-lock';
import { checkBlockRange, checkByteRange, rangeBytes, readFully, writeFully } from './volume';

/**
 * Point-in-time capture of a volume that stays in use, by copy-before-write: from the capture
 * instant on, the first write to a block the capture has neither read nor preserved first keeps the
 * block's old content. `readBlocks` returns the preserved copy where there is one, else the image,
 * and marks the blocks read, so later writes to them cost nothing extra. Opening one costs the same
 * for any volume size (a state byte per block, allocated before the instant), so the pause the
 * agent takes for it does not grow with the volume.
 *
 * Preserved blocks stay in memory up to `memoryBytes`; beyond that they go to a spill file under
 * `<host>/captures/`, in block-sized slots reused once their block is read. Nothing is durable: a
 * capture dies with its process, and the caller takes a new one (a new instant). The spill file a
 * killed process left is removed when the agent starts or when the same capture id is reopened.
 */

export interface VolumeCaptureOptions {
  /** Preserved bytes kept in memory before spilling to the side file. Default 16 MiB. */
  memoryBytes?: number;
}

export interface CaptureStats {
  blocksTotal: number;
  /** Blocks handed out (and released) by readBlocks: the capture no longer tracks them. */
  blocksRead: number;
  /** Blocks preserved now (in memory or spilled), waiting to be read. */
  blocksHeld: number;
  /** Blocks preserved over the capture's life. */
  blocksPreserved: number;
  /** Blocks written to the spill file over the capture's life. */
  blocksSpilled: number;
  memoryBytes: number;
}

export interface ReadCaptureOptions {
  /**
   * Keep tracking the blocks after this read, so they can be read again (e.g. when the caller may
   * retry storing them); call `release` once they are safe. Default false: released on read.
   */
  keep?: boolean;
  /** Read into this buffer when it is large enough (the result is then a view of it). */
  into?: Buffer;
}

export const DEFAULT_CAPTURE_MEMORY_BYTES = 16 * 1024 * 1024;

const PENDING = 0;
const PRESERVED = 1;
const DONE = 2;
/** Lent in place, not written since the instant: the first write keeps its old content in the lend's overrides. */
const LENT = 3;
/** Lent, and its old content is in the lend's overrides already. */
const LENT_KEPT = 4;

/** Spill files live in memory-backed captures of this process; the cleanup never touches those. */
const openSpills = new Set<string>();

/** `<volumeId>.<captureId>.<pid>.spill`: ids hold no dots, so the name splits back unambiguously. */
const SPILL_NAME = /^([a-z0-9-]+)\.([a-z0-9-]+)\.(\d+)\.spill$/;

export function capturesDir(hostRoot: string): string {
  return path.join(hostRoot, 'captures');
}

/**
 * Removes spill files no live capture uses: left by a process that is gone, or by this one before
 * its agent restarted. With `only`, just those of that volume and capture id.
 */
export async function removeStaleSpills(
  dir: string,
  only?: { volumeId: string; captureId: string },
): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isNoEnt(err)) return;
    throw err;
  }
  for (const name of names) {
    const m = SPILL_NAME.exec(name);
    if (!m) continue;
    if (only && (m[1] !== only.volumeId || m[2] !== only.captureId)) continue;
    const file = path.join(dir, name);
    const pid = Number(m[3]);
    if (openSpills.has(file) || (pid !== process.pid && processAlive(pid))) continue;
    await rm(file, { force: true });
  }
}

/** A capture broke (its old data could not be kept): retryable, a new capture takes a new instant. */
function captureLost(message: string): ApplicationFailure {
  return ApplicationFailure.create({ type: 'CaptureLost', message, nonRetryable: false });
}

export interface VolumeCaptureInit {
  captureId: string;
  hostId: string;
  /** The volume's one open device (plain volume or replica); the capture never closes it. */
  device: BlockDevice;
  spillDir: string;
  options?: VolumeCaptureOptions;
  /** Called once when the capture closes, so its owner stops routing writes through it. */
  onClose?: () => void;
}

interface Lend {
  first: number;
  last: number;
  overrides: Map<number, Buffer>;
  /** Bytes writes added to overrides, counted against the capture's memory. */
  keptBytes: number;
  ended: Promise<void>;
  end: () => void;
}

export class VolumeCapture {
  readonly captureId: string;
  readonly hostId: string;
  readonly volumeId: string;
  readonly sizeBytes: number;
  readonly blockSize: number;
  readonly blockCount: number;
  /** What the workload writes through while the capture is open: preserves, then writes. */
  readonly device: BlockDevice;
  private readonly inner: BlockDevice;
  private readonly onClose?: () => void;
  private readonly state: Uint8Array;
  private readonly lock = new RangeLock();
  /** Preserved old content: a buffer in memory, or the slot number in the spill file. */
  private readonly kept = new Map<number, Buffer | number>();
  private readonly memoryLimit: number;
  private readonly spillPath: string;
  private spill: Promise<FileHandle> | undefined;
  private spillSlots = 0;
  private readonly freeSlots: number[] = [];
  private memoryUsed = 0;
  private blocksRead = 0;
  private blocksPreserved = 0;
  private blocksSpilled = 0;
  private atSeq_ = -1;
  private atMs_ = 0;
  private pausedMs_ = 0;
  private started = false;
  private closed = false;
  private failure: string | undefined;
  /** Reads and preserving writes in progress: close waits for them before freeing what they use. */
  private readonly busy = new Set<Promise<unknown>>();
  /** Ranges lent right now, each with the overrides its borrower reads (writes add to them). */
  private readonly lends = new Set<Lend>();

  /** Before the instant: everything that costs time in proportion to the volume happens here. */
  constructor(init: VolumeCaptureInit) {
    const { device } = init;
    this.captureId = init.captureId;
    this.hostId = init.hostId;
    this.inner = device;
    this.onClose = init.onClose;
    this.volumeId = device.volumeId;
    this.sizeBytes = device.sizeBytes;
    this.blockSize = device.blockSize;
    this.blockCount = blockCountOf(device);
    this.state = new Uint8Array(this.blockCount);
    const memoryBytes = init.options?.memoryBytes ?? DEFAULT_CAPTURE_MEMORY_BYTES;
    if (!Number.isSafeInteger(memoryBytes) || memoryBytes < 0) {
      throw invalidInput(`capture memoryBytes must be a non-negative integer, got ${memoryBytes}`);
    }
    this.memoryLimit = memoryBytes;
    this.spillPath = path.join(init.spillDir, `${this.volumeId}.${this.captureId}.${process.pid}.spill`);
    this.device = {
      volumeId: device.volumeId,
      sizeBytes: device.sizeBytes,
      blockSize: device.blockSize,
      read: (offset, length, into) => this.inner.read(offset, length, into),
      write: (offset, data) => this.write(offset, data),
      // The agent owns the device: closing what the workload holds must not close it under the capture.
      close: async () => undefined,
    };
  }

  /** The workload's last logged seq at the instant: the capture holds every write up to it, none after. */
  get atSeq(): number {
    return this.atSeq_;
  }

  /** When the instant was taken (epoch ms). */
  get atMs(): number {
    return this.atMs_;
  }

  /** How long the instance was paused for the instant (ms), including its first write after. */
  get pausedMs(): number {
    return this.pausedMs_;
  }

  get isOpen(): boolean {
    return this.started && !this.closed;
  }

  /** The instant: from here on, writes through `device` preserve. Called with no write in flight. */
  begin(atSeq: number, atMs: number): void {
    if (this.started) throw invalidState(`capture ${this.captureId} has begun already`);
    this.started = true;
    this.atSeq_ = atSeq;
    this.atMs_ = atMs;
  }

  /** Set by the agent once the instance runs again. */
  recordPause(pausedMs: number): void {
    this.pausedMs_ = pausedMs;
  }

  stats(): CaptureStats {
    return {
      blocksTotal: this.blockCount,
      blocksRead: this.blocksRead,
      blocksHeld: this.kept.size,
      blocksPreserved: this.blocksPreserved,
      blocksSpilled: this.blocksSpilled,
      memoryBytes: this.memoryUsed,
    };
  }

  /**
   * Blocks [first, first + count) as they were at the instant (the last block may be short). Each
   * block can be read once, unless read with `keep` and not yet released.
   */
  async readBlocks(first: number, count: number, opts: ReadCaptureOptions = {}): Promise<Buffer> {
    this.checkReadable();
    return this.track(this.readRange(first, count, opts));
  }

  private async readRange(first: number, count: number, opts: ReadCaptureOptions): Promise<Buffer> {
    checkBlockRange(this, first, count);
    const last = first + count - 1;
    const release = await this.lock.acquire(first, last);
    try {
      this.checkNotHandedOut(first, last);
      // Pending blocks are as they were at the instant: any write to them waits for this lock.
      const out = await this.inner.read(first * this.blockSize, rangeBytes(this, first, count), opts.into);
      for (let b = first; b <= last; b++) {
        if (this.state[b] !== PRESERVED) continue;
        const at = (b - first) * this.blockSize;
        await this.restore(b, out.subarray(at, at + rangeBytes(this, b, 1)));
      }
      this.checkReadable();
      if (!opts.keep) this.markDone(first, last);
      return out;
    } finally {
      release();
    }
  }

  /** True when the volume is one plain file, so lendBlocks can hand its blocks out in place. */
  get lendsInPlace(): boolean {
    return this.inner.file !== undefined;
  }

  /**
   * Hands blocks [first, first + count) as of the instant to `use` without reading them: the
   * image's range, with the old content of blocks written since the instant as overrides. Writes
   * to these blocks do not wait for `use`: the first one to each block adds the block's old content
   * to `overrides` before it lands. So a byte read from the range is as of the instant unless its
   * block has an override by the time the read is over: apply the overrides after reading, never
   * before. The blocks count as read once `use` resolves.
   */
  async lendBlocks<T>(first: number, count: number, use: (lent: PatchedRange) => Promise<T>): Promise<T> {
    this.checkReadable();
    const file = this.inner.file;
    if (!file) {
      throw invalidState(
        `volume ${this.volumeId} on host ${this.hostId} is not one plain file (a replica still reading through to its source): read its blocks instead`,
      );
    }
    return this.track(this.lendRange(file, first, count, use));
  }

  private async lendRange<T>(
    file: FileRef,
    first: number,
    count: number,
    use: (lent: PatchedRange) => Promise<T>,
  ): Promise<T> {
    checkBlockRange(this, first, count);
    const last = first + count - 1;
    let end!: () => void;
    const ended = new Promise<void>((resolve) => (end = resolve));
    const lend: Lend = { first, last, overrides: new Map(), keptBytes: 0, ended, end };
    // Held only while the range is set up: a guest write to it then waits for no borrower.
    const release = await this.lock.acquire(first, last);
    try {
      this.checkNotHandedOut(first, last);
      for (let b = first; b <= last; b++) {
        if (this.state[b] !== PRESERVED) continue;
        const old = Buffer.allocUnsafe(rangeBytes(this, b, 1));
        await this.restore(b, old);
        lend.overrides.set((b - first) * this.blockSize, old);
      }
      this.checkReadable();
      for (let b = first; b <= last; b++) if (this.state[b] === PENDING) this.state[b] = LENT;
      this.lends.add(lend);
    } finally {
      release();
    }
    let result: T;
    try {
      const range = { ...file, position: first * this.blockSize, length: rangeBytes(this, first, count) };
      result = await use({ range, overrides: lend.overrides });
      this.checkReadable();
    } catch (err) {
      await this.unlend(lend);
      throw err;
    }
    this.markDone(first, last);
    this.endLend(lend);
    return result;
  }

  /** Writes waiting for the borrower go on once the blocks' state says what they need. */
  private endLend(lend: Lend): void {
    this.lends.delete(lend);
    this.memoryUsed -= lend.keptBytes;
    lend.end();
  }

  /** A borrower that failed read nothing: its blocks can be lent or read again, as of the instant. */
  private async unlend(lend: Lend): Promise<void> {
    for (let b = lend.first; b <= lend.last; b++) if (this.state[b] === LENT) this.state[b] = PENDING;
    this.endLend(lend);
    for (let b = lend.first; b <= lend.last; b++) {
      if (this.state[b] === LENT_KEPT && this.tracking()) {
        await this.hold(b, lend.overrides.get((b - lend.first) * this.blockSize)!);
      }
    }
  }

  /** Checked under the lock: a concurrent read of the same blocks may just have released them. */
  private checkNotHandedOut(first: number, last: number): void {
    for (let b = first; b <= last; b++) {
      if (this.state[b] === DONE || this.state[b] === LENT || this.state[b] === LENT_KEPT) {
        throw invalidState(
          `capture ${this.captureId} of volume ${this.volumeId} on host ${this.hostId} already handed out block ${b} and no longer holds its content: open a new capture (a new instant) to read it again`,
        );
      }
    }
  }

  /** Stops tracking blocks read with `keep`: their preserved copies are freed. */
  async release(first: number, count: number): Promise<void> {
    if (this.closed) return;
    checkBlockRange(this, first, count);
    const unlock = await this.lock.acquire(first, first + count - 1);
    try {
      this.markDone(first, first + count - 1);
    } finally {
      unlock();
    }
  }

  /** Writes stop preserving, preserved data and the spill file go. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.onClose?.();
    // A write preserving right now must not add to a freed store (or recreate the spill file).
    await Promise.allSettled([...this.busy]);
    this.kept.clear();
    this.memoryUsed = 0;
    this.freeSlots.length = 0;
    if (this.spill) {
      const fh = await this.spill.catch(() => undefined);
      await fh?.close();
      this.spill = undefined;
    }
    openSpills.delete(this.spillPath);
    await rm(this.spillPath, { force: true });
  }

  private async write(offset: number, data: Buffer): Promise<void> {
    if (this.tracking() && data.length > 0) {
      checkByteRange(this, 'write', offset, data.length);
      const b0 = Math.floor(offset / this.blockSize);
      const b1 = Math.floor((offset + data.length - 1) / this.blockSize);
      if (this.anyUnkept(b0, b1)) {
        await this.track(this.preserveRange(b0, b1));
      }
    }
    await this.inner.write(offset, data);
  }

  /**
   * Keeps the old content of the blocks in [b0, b1] not kept yet: in the capture, or in the overrides
   * of the lend they are in. If that fails the capture is lost (reads say so) but the write goes on:
   * the instance's disk must not fail for a snapshot's sake.
   */
  private async preserveRange(b0: number, b1: number): Promise<void> {
    const release = await this.lock.acquire(b0, b1);
    try {
      // A capture read may have taken some of them while we waited for the lock.
      for (let b = b0; b <= b1 && this.tracking();) {
        if (!this.unkept(b)) {
          b++;
          continue;
        }
        let end = b + 1;
        while (end <= b1 && this.unkept(end)) end++;
        const old = await this.inner.read(b * this.blockSize, rangeBytes(this, b, end - b));
        for (let i = b; i < end; i++) {
          const at = (i - b) * this.blockSize;
          await this.keepOld(i, old.subarray(at, at + rangeBytes(this, i, 1)));
        }
        b = end;
      }
    } catch (err) {
      this.failure = `keeping the old content of blocks ${b0}-${b1} failed (${err instanceof Error ? err.message : String(err)})`;
      this.dropKept();
    } finally {
      release();
    }
  }

  /**
   * Keeps a block's old content, read under the lock (so no write has changed it since), before a
   * write lands on it: in the capture, or in the overrides of its lend, where a borrower that reads
   * the block after that finds it. Over the memory budget, the write waits for the borrower instead.
   */
  private async keepOld(block: number, old: Buffer): Promise<void> {
    if (this.state[block] === LENT) {
      const lend = this.lendOf(block);
      if (this.memoryUsed + old.length > this.memoryLimit) {
        await lend.ended; // then the block is read (or, if the borrower failed, pending again)
      } else {
        lend.overrides.set((block - lend.first) * this.blockSize, Buffer.from(old));
        lend.keptBytes += old.length;
        this.memoryUsed += old.length;
        this.state[block] = LENT_KEPT;
        this.blocksPreserved++;
        return;
      }
    }
    // Pending, or its lend ended while the old content was read: read blocks need nothing kept.
    if (this.state[block] === PENDING) await this.keep(block, old);
  }

  private async keep(block: number, old: Buffer): Promise<void> {
    await this.hold(block, old);
    this.blocksPreserved++;
  }

  /** Holds a block's old content (in memory or spilled) until it is read. */
  private async hold(block: number, old: Buffer): Promise<void> {
    if (this.memoryUsed + old.length <= this.memoryLimit) {
      // A copy: `old` may be a view of a larger read that would otherwise stay alive.
      this.kept.set(block, Buffer.from(old));
      this.memoryUsed += old.length;
    } else {
      const slot = this.freeSlots.pop() ?? this.spillSlots++;
      await writeFully(await this.spillFile(), old, slot * this.blockSize);
      this.kept.set(block, slot);
      this.blocksSpilled++;
    }
    this.state[block] = PRESERVED;
  }

  private async restore(block: number, into: Buffer): Promise<void> {
    const kept = this.kept.get(block);
    if (kept === undefined) {
      this.checkReadable(); // closed or lost meanwhile: say that
      throw captureLost(`capture ${this.captureId} of volume ${this.volumeId}: block ${block} was not kept`);
    }
    if (typeof kept === 'number') {
      await readFully(await this.spillFile(), into, kept * this.blockSize);
    } else {
      kept.copy(into, 0, 0, into.length);
    }
  }

  private markDone(b0: number, b1: number): void {
    for (let b = b0; b <= b1; b++) {
      if (this.state[b] === DONE) continue;
      this.state[b] = DONE;
      this.blocksRead++;
      const kept = this.kept.get(b);
      if (kept === undefined) continue;
      this.kept.delete(b);
      if (typeof kept === 'number') this.freeSlots.push(kept);
      else this.memoryUsed -= kept.length;
    }
  }

  private spillFile(): Promise<FileHandle> {
    if (!this.spill) {
      openSpills.add(this.spillPath);
      this.spill = mkdir(path.dirname(this.spillPath), { recursive: true }).then(() =>
        open(this.spillPath, 'w+'),
      );
    }
    return this.spill;
  }

  private dropKept(): void {
    this.kept.clear();
    this.memoryUsed = 0;
  }

  private async track<T>(op: Promise<T>): Promise<T> {
    this.busy.add(op);
    try {
      return await op;
    } finally {
      this.busy.delete(op);
    }
  }

  private tracking(): boolean {
    return this.started && !this.closed && this.failure === undefined;
  }

  /** The lend a LENT or LENT_KEPT block is in. */
  private lendOf(block: number): Lend {
    for (const lend of this.lends) if (lend.first <= block && block <= lend.last) return lend;
    throw new Error(`capture ${this.captureId}: block ${block} is marked lent but no lend holds it`);
  }

  /** Pending or lent, and the old content not kept yet: a write to it must keep that first. */
  private unkept(b: number): boolean {
    return this.state[b] === PENDING || this.state[b] === LENT;
  }

  private anyUnkept(b0: number, b1: number): boolean {
    for (let b = b0; b <= b1; b++) if (this.unkept(b)) return true;
    return false;
  }

  private checkReadable(): void {
    if (this.closed) {
      throw invalidState(
        `capture ${this.captureId} of volume ${this.volumeId} on host ${this.hostId} is closed: open a new capture`,
      );
    }
    if (!this.started) throw invalidState(`capture ${this.captureId} has not begun`);
    if (this.failure) {
      throw captureLost(
        `capture ${this.captureId} of volume ${this.volumeId} on host ${this.hostId} is lost: ${this.failure}; open a new capture`,
      );
    }
  }
}
