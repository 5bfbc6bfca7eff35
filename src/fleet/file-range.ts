import { read as readCallback, fstatSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

/**
 * An open file, named so that another thread can tell it is still the same one: a descriptor number
 * is reused as soon as it is closed, device and inode are not.
 */
export interface FileRef {
  readonly fd: number;
  readonly dev: number;
  readonly ino: number;
}

/**
 * Bytes in place in an open file. A snapshot hashes and stores them without a trip through a
 * buffer: hashing maps the pages, storing copies them inside the kernel as `cp` does. The owner
 * keeps the bytes unchanged, and the file open, for as long as the range is in use.
 */
export interface FileRange extends FileRef {
  readonly position: number;
  readonly length: number;
}

/**
 * A file range as it is to be read: its bytes, except where an override (keyed by its offset from
 * the range's start) gives other ones. A capture lends blocks this way: the image in place, plus
 * the old content of the few blocks written since its instant. Overrides may be added while the
 * range is lent (never changed): lay them over the bytes after reading them, not before.
 */
export interface PatchedRange {
  readonly range: FileRange;
  readonly overrides: ReadonlyMap<number, Buffer>;
}

export async function fileRefOf(fh: FileHandle): Promise<FileRef> {
  const { dev, ino } = await fh.stat();
  return { fd: fh.fd, dev, ino };
}

/** Throws unless `ref.fd` still names the file it named when the ref was taken. */
export function assertSameFile(ref: FileRef): void {
  let same = false;
  try {
    const st = fstatSync(ref.fd);
    same = st.dev === ref.dev && st.ino === ref.ino;
  } catch {
    // closed: not the same file
  }
  if (!same) throw new Error(`file descriptor ${ref.fd} no longer names the file it was lent for`);
}

/** Reads the range into a new buffer: where mapping or kernel copy is not available, or for a patch. */
export async function readFileRange(range: FileRange): Promise<Buffer> {
  const out = Buffer.allocUnsafe(range.length);
  let done = 0;
  while (done < range.length) {
    const n = await new Promise<number>((resolve, reject) =>
      readCallback(range.fd, out, done, range.length - done, range.position + done, (err, bytes) =>
        err ? reject(err) : resolve(bytes),
      ),
    );
    if (n === 0) throw new Error(`file ended at byte ${range.position + done}, inside a lent range`);
    done += n;
  }
  return out;
}

/** The part of `range` from `offset` (relative to its start), `length` bytes long. */
export function subRange(range: FileRange, offset: number, length: number): FileRange {
  return { fd: range.fd, dev: range.dev, ino: range.ino, position: range.position + offset, length };
}
