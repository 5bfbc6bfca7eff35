import koffi from 'koffi';

type AsyncCopy = (
  fdIn: number,
  offIn: number[],
  fdOut: number,
  offOut: number[],
  length: number,
  flags: number,
  done: (err: unknown, copied: number) => void,
) => void;

type AsyncFallocate = (
  fd: number,
  mode: number,
  offset: number,
  length: number,
  done: (err: unknown, result: number) => void,
) => void;

/**
 * A Linux libc call through the FFI, run on a pool thread; null (looked up once) when the platform
 * or libc does not offer it (another libc, such as musl, or no prebuilt FFI binary).
 */
function libcCall<F>(signature: string): () => F | null {
  let fn: F | null | undefined;
  return () => {
    if (fn !== undefined) return fn;
    fn = null;
    if (process.platform !== 'linux') return null;
    try {
      fn = koffi.load('libc.so.6').func(signature).async as F;
    } catch {
      // Callers do without: see each one.
    }
    return fn;
  };
}

/**
 * Linux copy_file_range(2). `cp` copies this way, so the bytes go from one file's page cache to the
 * other's without a round trip through user memory: one memory copy instead of two, which is most
 * of the difference between a user-space copy loop and `cp`. Without it callers copy through user
 * space.
 */
const copyFileRange = libcCall<AsyncCopy>(
  'int64_t copy_file_range(int fd_in, _Inout_ int64_t *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)',
);

/** fallocate(2); without it, bytes meant to be dropped from a file stay where they are. */
const fallocate = libcCall<AsyncFallocate>('int fallocate(int fd, int mode, int64_t offset, int64_t len)');

/** Resolves with the call's result, or rejects with its error as an Error. */
function settle<T>(resolve: (value: T) => void, reject: (err: Error) => void) {
  return (err: unknown, result: T) =>
    err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(result);
}

export function kernelCopyAvailable(): boolean {
  return copyFileRange() !== null;
}

/**
 * Copies `length` bytes from `fdIn` at `inPosition` to `fdOut` at `outPosition` inside the kernel.
 * Rejects when the kernel refuses (e.g. files on filesystems it cannot copy between) or the source
 * ends early; the caller falls back to reading and writing.
 */
export async function kernelCopy(
  fdIn: number,
  inPosition: number,
  fdOut: number,
  outPosition: number,
  length: number,
): Promise<void> {
  const copy = copyFileRange();
  if (!copy) throw new Error('copy_file_range is not available on this platform');
  let done = 0;
  while (done < length) {
    // int64_t: a BigInt should koffi ever give one.
    const copied = Number(
      await new Promise<number>((resolve, reject) =>
        copy(
          fdIn,
          [inPosition + done],
          fdOut,
          [outPosition + done],
          length - done,
          0,
          settle(resolve, reject),
        ),
      ),
    );
    if (copied < 0) throw new Error(`copy_file_range failed after ${done} of ${length} bytes`);
    if (copied === 0) throw new Error(`source ended after ${done} of ${length} bytes`);
    done += copied;
  }
}

/** fallocate(2) modes: allocate (0), free the blocks, keep the file's size. */
const FALLOC_ALLOCATE = 0;
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

async function fallocateRange(fd: number, mode: number, offset: number, length: number): Promise<boolean> {
  const call = fallocate();
  if (!call) return false;
  const result = await new Promise<number>((resolve, reject) =>
    call(fd, mode, offset, length, settle(resolve, reject)),
  );
  return result === 0;
}

/**
 * Allocates the disk blocks under [offset, offset + length) of a file ahead of writing them, and
 * makes the file at least that long. False where the platform or the filesystem cannot.
 */
export async function preallocate(fd: number, offset: number, length: number): Promise<boolean> {
  return fallocateRange(fd, FALLOC_ALLOCATE, offset, length);
}

/**
 * Frees the disk blocks under [offset, offset + length) of a file, which then reads as zeros; the
 * file keeps its size. False where the platform or the filesystem cannot (the bytes then stay).
 */
export async function punchHole(fd: number, offset: number, length: number): Promise<boolean> {
  return fallocateRange(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
}
