import { assertId } from '../contracts';
import { transferHash } from './hashing';
import { kernelCopyAvailable } from './kernel-copy';
import type { HostStore } from './host-store';
import type { Volume } from './volume';

/**
 * The target's link to the source ("secondary") during a post-sync. Message shaped (volume + block
 * range in, data + hash out) so a network transport can implement it as well as the in-process one.
 * The hash is computed where the data is read, and the receiver recomputes it.
 */
export interface BlockSource {
  readonly hostId: string;
  /** Blocks [firstBlock, firstBlock + count) as one buffer (the volume's last block may be short). */
  readBlocks(volumeId: string, firstBlock: number, count: number): Promise<{ data: Buffer; hash: string }>;
  /** One transferHash per block of the range. */
  hashBlocks(volumeId: string, firstBlock: number, count: number): Promise<string[]>;
  /**
   * Optional: the receiver is done with a buffer readBlocks returned (its bytes are in the image) and
   * will not touch it again, so the source may reuse its memory. Saves the allocation and GC of a
   * fresh multi-MiB buffer per chunk, which otherwise costs as much as the copy itself.
   */
  recycle?(data: Buffer): void;
  /**
   * Optional server-side copy: blocks [firstBlock, firstBlock + count) go straight into the receiver's
   * image (`fd` at `position`) inside the kernel, as when both host stores share a filesystem. No
   * bytes cross a link, so there is no transfer hash to check; the verify pass hash-compares every
   * block copied this way with the source before the source is released. Rejects when the kernel
   * cannot do it; the receiver then falls back to readBlocks. Returns the bytes copied.
   */
  copyBlocksInto?(
    volumeId: string,
    firstBlock: number,
    count: number,
    into: { fd: number; position: number },
  ): Promise<number>;
  close(): Promise<void>;
}

/** Recycled read buffers: a few, of one size (the copy's usual chunk). */
const POOL_BUFFERS = 8;
const MIN_POOLED_BYTES = 1024 * 1024;

/** Reads the source host's store directly: both hosts are served by one process. */
export function localBlockSource(store: HostStore): BlockSource {
  const open = new Map<string, Promise<Volume>>();
  const pool: Buffer[] = [];
  let poolSize = 0;

  function volume(volumeId: string): Promise<Volume> {
    assertId('volumeId', volumeId);
    let v = open.get(volumeId);
    if (!v) {
      v = store.openVolume(volumeId);
      open.set(volumeId, v);
      // A failed open is not cached: the next call tries again.
      v.catch(() => open.delete(volumeId));
    }
    return v;
  }

  const source: BlockSource = {
    hostId: store.hostId,
    async readBlocks(volumeId, firstBlock, count) {
      const v = await volume(volumeId);
      const into = count * v.blockSize <= poolSize ? pool.pop() : undefined;
      const data = await v.readBlocks(firstBlock, count, into);
      return { data, hash: transferHash(data) };
    },
    async hashBlocks(volumeId, firstBlock, count) {
      const v = await volume(volumeId);
      const data = await v.readBlocks(firstBlock, count);
      const hashes: string[] = [];
      for (let offset = 0; offset < data.length; offset += v.blockSize) {
        hashes.push(transferHash(data.subarray(offset, offset + v.blockSize)));
      }
      return hashes;
    },
    recycle(data) {
      const memory = data.buffer;
      // Only buffers that own their whole (large) ArrayBuffer: never a slice of Node's shared pool.
      if (data.byteOffset !== 0 || memory.byteLength < MIN_POOLED_BYTES) return;
      if (memory.byteLength !== poolSize) {
        poolSize = memory.byteLength;
        pool.length = 0;
      }
      // A buffer handed back twice must not be lent out twice.
      if (pool.length < POOL_BUFFERS && !pool.some((b) => b.buffer === memory)) {
        pool.push(Buffer.from(memory, 0, poolSize));
      }
    },
    async close() {
      const volumes = [...open.values()];
      open.clear();
      for (const v of volumes) {
        await v.then(
          (vol) => vol.close(),
          () => undefined,
        );
      }
    },
  };
  if (kernelCopyAvailable()) {
    source.copyBlocksInto = async (volumeId, firstBlock, count, into) =>
      (await volume(volumeId)).copyBlocksTo(firstBlock, count, into.fd, into.position);
  }
  return source;
}
