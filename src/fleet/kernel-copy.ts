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

let copyFileRange: AsyncCopy | null | undefined;
let fallocate: AsyncFallocate | null | undefined;

/**
 * Linux copy_file_range(2) through an FFI call on a pool thread. `cp` copies this way, so the bytes
 * go from one file's page cache to the other's without a round trip through user memory: one memory
 * copy instead of two, which is most of the difference between a user-space copy loop and `cp`.
 * Null when the platform or libc does not offer it; callers then copy through user space.
 */
function binding(): AsyncCopy | null {
  if (copyFileRange !== undefined) return copyFileRange;
  copyFileRange = null;
  if (process.platform !== 'linux') return null;
  try {
    const libc = koffi.load('libc.so.6');
    const fn = libc.func(
      'int64_t copy_file_range(int fd_in, _Inout_ int64_t *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)',
    );
    copyFileRange = fn.async as AsyncCopy;
  } catch {
    // Another libc (musl names it differently) or no prebuilt FFI binary: the user-space path serves.
  }
  return copyFileRange;
}

export function kernelCopyAvailable(): boolean {
  return binding() !== null;
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
  const copy = binding();
  if (!copy) throw new Error('copy_file_range is not available on this platform');
  let done = 0;
  while (done < length) {
    const copied = await new Promise<number>((resolve, reject) =>
      copy(fdIn, [inPosition + done], fdOut, [outPosition + done], length - done, 0, (err, n) =>
        err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(Number(n)),
      ),
    );
    if (copied < 0) throw new Error(`copy_file_range failed after ${done} of ${length} bytes`);
    if (copied === 0) throw new Error(`source ended after ${done} of ${length} bytes`);
    done += copied;
  }
}

/** fallocate(2) modes: free the blocks, keep the file's size. */
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

function fallocateBinding(): AsyncFallocate | null {
  if (fallocate !== undefined) return fallocate;
  fallocate = null;
  if (process.platform !== 'linux') return null;
  try {
    const libc = koffi.load('libc.so.6');
    fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)')
      .async as AsyncFallocate;
  } catch {
    // As for copy_file_range: without it the bytes stay where they are.
  }
  return fallocate;
}

/**
 * Frees the disk blocks under [offset, offset + length) of a file, which then reads as zeros; the
 * file keeps its size. False where the platform or the filesystem cannot (the bytes then stay).
 */
export async function punchHole(fd: number, offset: number, length: number): Promise<boolean> {
  const call = fallocateBinding();
  if (!call) return false;
  const result = await new Promise<number>((resolve, reject) =>
    call(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, (err, r) =>
      err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(r),
    ),
  );
  return result === 0;
}
