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

let copyFileRange: AsyncCopy | null | undefined;

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
