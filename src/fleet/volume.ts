import { open, type FileHandle } from 'node:fs/promises';
import { blockCountOf, invalidInput, invalidState } from '../contracts';
import type { BlockDevice } from './block-device';
import { fileRefOf, type FileRef } from './file-range';
import { kernelCopy } from './kernel-copy';

/** Geometry shared by plain volumes, replicas and block sources: the last block may be partial. */
export interface VolumeGeometry {
  volumeId: string;
  sizeBytes: number;
  blockSize: number;
}

/** Byte length of blocks [first, first + count), the last one possibly short. */
export function rangeBytes(
  g: Pick<VolumeGeometry, 'sizeBytes' | 'blockSize'>,
  first: number,
  count: number,
): number {
  return Math.min(g.sizeBytes, (first + count) * g.blockSize) - first * g.blockSize;
}

/** A byte range inside the volume, or a non-retryable InvalidInput naming the volume and its size. */
export function checkByteRange(
  g: VolumeGeometry,
  what: 'read' | 'write',
  offset: number,
  length: number,
): void {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > g.sizeBytes
  ) {
    throw invalidInput(
      `${what} of ${length} bytes at offset ${offset} is outside volume ${g.volumeId} (size ${g.sizeBytes} bytes): keep offset + length <= size`,
    );
  }
}

export function checkBlockRange(g: VolumeGeometry, first: number, count: number): void {
  const total = blockCountOf(g);
  if (
    !Number.isSafeInteger(first) ||
    !Number.isSafeInteger(count) ||
    first < 0 ||
    count < 1 ||
    first + count > total
  ) {
    throw invalidInput(
      `block range ${first}+${count} is outside volume ${g.volumeId} (${total} blocks of ${g.blockSize} bytes)`,
    );
  }
}

/**
 * `into` (a view of its first `length` bytes) when given and large enough, else a new buffer: large
 * reads into a reused buffer skip the first touch of fresh memory, which costs more than the read.
 */
export function bufferFor(length: number, into?: Buffer): Buffer {
  return into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
}

/** pread until the buffer is full; a short file is an error, not a silent zero fill. */
export async function readFully(fh: FileHandle, target: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await fh.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) {
      throw invalidState(
        `image ended at byte ${position + done} while reading ${target.length} bytes at ${position}`,
      );
    }
    done += bytesRead;
  }
}

export async function writeFully(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** A complete volume image on its host, read and written by offset on a file descriptor kept open. */
export class Volume implements BlockDevice {
  private closed = false;

  private constructor(
    readonly volumeId: string,
    readonly sizeBytes: number,
    readonly blockSize: number,
    private readonly fh: FileHandle,
    readonly file: FileRef,
  ) {}

  static async open(imagePath: string, g: VolumeGeometry): Promise<Volume> {
    const fh = await open(imagePath, 'r+');
    try {
      return new Volume(g.volumeId, g.sizeBytes, g.blockSize, fh, await fileRefOf(fh));
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    this.checkOpen();
    checkByteRange(this, 'read', offset, length);
    const out = bufferFor(length, into);
    await readFully(this.fh, out, offset);
    return out;
  }

  /**
   * Reads blocks [first, first + count) into one buffer (the last block may be short), into `into`
   * when given and large enough (the result is then a view of it).
   */
  async readBlocks(first: number, count: number, into?: Buffer): Promise<Buffer> {
    this.checkOpen();
    checkBlockRange(this, first, count);
    const length = rangeBytes(this, first, count);
    const out = bufferFor(length, into);
    await readFully(this.fh, out, first * this.blockSize);
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkOpen();
    checkByteRange(this, 'write', offset, data.length);
    await writeFully(this.fh, data, offset);
  }

  /** Copies blocks [first, first + count) into another open file at `position`, inside the kernel. */
  async copyBlocksTo(first: number, count: number, fd: number, position: number): Promise<number> {
    this.checkOpen();
    checkBlockRange(this, first, count);
    const length = rangeBytes(this, first, count);
    await kernelCopy(this.fh.fd, first * this.blockSize, fd, position, length);
    return length;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }

  private checkOpen(): void {
    if (this.closed) throw invalidState(`volume ${this.volumeId} is closed`);
  }
}
