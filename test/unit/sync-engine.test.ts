import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync, closeSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorType } from '../../src/contracts';
import { localBlockSource, type BlockSource } from '../../src/fleet/block-source';
import { HostStore, type VolumeMeta } from '../../src/fleet/host-store';
import { kernelCopy } from '../../src/fleet/kernel-copy';
import { patternBytes } from '../../src/fleet/pattern';
import { ReplicaVolume } from '../../src/fleet/replica';
import { BlockState, SyncMap } from '../../src/fleet/sync-map';
import { expectFailure } from '../helpers/failures';

const BS = 4096;
/** 37 full blocks and a partial last block of 1.5 KiB. */
const SIZE = 37 * BS + 1536;
const BLOCKS = 38;
const VOL = 'v-1';
const META: VolumeMeta = {
  volumeId: VOL,
  instanceId: 'i-1',
  sizeBytes: SIZE,
  blockSize: BS,
  userData: false,
};

interface TestSource extends BlockSource {
  /** [firstBlock, count] of every readBlocks call. */
  calls: [number, number][];
}

/** Wraps a source to observe, delay or corrupt what it sends. */
function wrap(
  inner: BlockSource,
  hooks: {
    before?: (first: number, count: number) => Promise<void> | void;
    corrupt?: (first: number, count: number, callNo: number) => boolean;
  } = {},
): TestSource {
  const calls: [number, number][] = [];
  return {
    hostId: inner.hostId,
    calls,
    async readBlocks(volumeId, first, count) {
      calls.push([first, count]);
      await hooks.before?.(first, count);
      const r = await inner.readBlocks(volumeId, first, count);
      if (hooks.corrupt?.(first, count, calls.length)) {
        const data = Buffer.from(r.data);
        data[data.length - 1] ^= 0xff;
        return { data, hash: r.hash };
      }
      return r;
    },
    hashBlocks: (volumeId, first, count) => inner.hashBlocks(volumeId, first, count),
    close: () => inner.close(),
  };
}

const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('post-sync engine (ReplicaVolume)', () => {
  let dir: string;
  let src: HostStore;
  let dst: HostStore;
  let local: BlockSource;
  let original: Buffer;
  const open: ReplicaVolume[] = [];

  async function replica(source: BlockSource = local): Promise<ReplicaVolume> {
    await ReplicaVolume.create(dst, META);
    const r = await ReplicaVolume.open(dst, VOL, source);
    open.push(r);
    return r;
  }

  async function reopen(r: ReplicaVolume, source: BlockSource = local): Promise<ReplicaVolume> {
    await r.close();
    const again = await ReplicaVolume.open(dst, VOL, source);
    open.push(again);
    return again;
  }

  const targetImage = () => readFileSync(dst.imagePath(VOL));

  beforeEach(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rehome-sync-'));
    src = new HostStore(dir, 'h-src');
    dst = new HostStore(dir, 'h-dst');
    await src.createVolume(META, 'pattern');
    original = patternBytes(`vol:${VOL}`, SIZE);
    local = localBlockSource(src);
  });

  afterEach(async () => {
    for (const r of open.splice(0)) await r.close();
    await local.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('starts as a sparse image with every block missing; create is idempotent', async () => {
    await ReplicaVolume.create(dst, META);
    await ReplicaVolume.create(dst, META);
    expect(ReplicaVolume.isReplica(dst, VOL)).toBe(true);
    expect(targetImage().length).toBe(SIZE);
    const r = await ReplicaVolume.open(dst, VOL, local);
    open.push(r);
    expect(r.progress()).toEqual({ blocksDone: 0, blocksTotal: BLOCKS, blocksMissing: BLOCKS });
    await expectFailure(ReplicaVolume.open(dst, VOL, local), ErrorType.InvalidState);
    await expectFailure(
      ReplicaVolume.create(dst, { ...META, sizeBytes: SIZE + 512 }),
      ErrorType.InvalidState,
    );
    await expectFailure(dst.openVolume(VOL), ErrorType.InvalidState);
  });

  it('read-through: reading a missing block fetches it, marks it Copied and counts it', async () => {
    const r = await replica();
    const got = await r.read(5 * BS + 100, 200);
    expect(got.equals(original.subarray(5 * BS + 100, 5 * BS + 300))).toBe(true);
    expect(r.blockState(5)).toBe(BlockState.Copied);
    expect(r.blockState(4)).toBe(BlockState.Missing);
    expect(r.counters().bytesReadThrough).toBe(BS);
    expect(
      targetImage()
        .subarray(5 * BS, 6 * BS)
        .equals(original.subarray(5 * BS, 6 * BS)),
    ).toBe(true);

    // Across blocks 9..11, and the partial last block.
    expect((await r.read(9 * BS + 10, 2 * BS)).equals(original.subarray(9 * BS + 10, 11 * BS + 10))).toBe(
      true,
    );
    expect((await r.read(SIZE - 512, 512)).equals(original.subarray(SIZE - 512))).toBe(true);
    expect(r.counters().bytesReadThrough).toBe(BS + 3 * BS + 1536);
    // A second read of present blocks fetches nothing.
    await r.read(5 * BS, BS);
    expect(r.counters().bytesReadThrough).toBe(BS + 3 * BS + 1536);
    await expectFailure(r.read(SIZE - 512, 513), ErrorType.InvalidInput);
    expect(r.counters().bytesCopied).toBe(0);
  });

  it('a partial write to a missing block keeps the rest of the block from the source', async () => {
    const r = await replica();
    const data = patternBytes('w', 1000);
    await r.write(2 * BS + 50, data);
    expect(r.blockState(2)).toBe(BlockState.Written);
    const expected = Buffer.from(original);
    data.copy(expected, 2 * BS + 50);
    expect((await r.read(2 * BS, BS)).equals(expected.subarray(2 * BS, 3 * BS))).toBe(true);
    expect(r.counters().bytesReadThrough).toBe(BS);
    // A full-block write needs nothing from the source.
    await r.write(3 * BS, Buffer.alloc(BS, 1));
    expect(r.counters().bytesReadThrough).toBe(BS);
    await expectFailure(r.write(SIZE - 511, Buffer.alloc(512)), ErrorType.InvalidInput);
  });

  it('a write that lands while the copy of its chunk is in flight is never overwritten', async () => {
    let chunkInFlight!: () => void;
    const inFlight = new Promise<void>((resolve) => (chunkInFlight = resolve));
    const slow = wrap(local, {
      before: async (first) => {
        if (first === 0) chunkInFlight();
        await delay(30);
      },
    });
    const r = await replica(slow);
    const copying = r.copy({ chunkBlocks: 4 });
    await inFlight; // the copy has claimed blocks 0..3 and is fetching them (30 ms per chunk)
    expect(r.blockState(3)).not.toBe(BlockState.Copied);
    expect(r.blockState(30)).toBe(BlockState.Missing);
    const full = Buffer.alloc(BS, 0xaa);
    const partial = Buffer.alloc(700, 0xbb);
    const later = Buffer.alloc(BS, 0xcc);
    await Promise.all([
      r.write(3 * BS, full), // in the chunk being fetched: waits for it, then wins
      r.write(6 * BS + 1000, partial),
      r.write(30 * BS, later), // a block the copy has not reached: the copy must skip it
    ]);
    expect(r.blockState(3)).toBe(BlockState.Written);
    expect(r.blockState(30)).toBe(BlockState.Written);
    const p = await copying;
    expect(p.done).toBe(true);

    const expected = Buffer.from(original);
    full.copy(expected, 3 * BS);
    partial.copy(expected, 6 * BS + 1000);
    later.copy(expected, 30 * BS);
    expect(targetImage().equals(expected)).toBe(true);
    for (const b of [3, 6, 30]) expect(r.blockState(b)).toBe(BlockState.Written);
    // Block 30 was written before the copy reached it, so the copy skipped it; block 6 came either
    // with the copy (if already claimed) or with the partial write; nothing came twice.
    expect(p.bytesCopied + r.counters().bytesReadThrough).toBe(SIZE - BS);
  });

  it('workload reads and writes interleaved with a running copy end equal to the source overlaid with the writes', async () => {
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const slow = wrap(local, { before: () => delay(rand(4)) });
    const r = await replica(slow);
    const expected = Buffer.from(original);
    const copying = r.copy({ chunkBlocks: 3 });
    for (let op = 0; op < 120; op++) {
      const offset = rand(SIZE / 512) * 512;
      const length = Math.min(SIZE - offset, (1 + rand(20)) * 512);
      if (rand(2) === 0) {
        const data = patternBytes(`op-${op}`, length);
        await r.write(offset, data);
        data.copy(expected, offset);
      } else {
        expect((await r.read(offset, length)).equals(expected.subarray(offset, offset + length))).toBe(true);
      }
      if (rand(4) === 0) await delay(1);
    }
    const p = await copying;
    const rest = await r.copy(); // in case the workload outpaced nothing: finish whatever is left
    expect(p.done || rest.done).toBe(true);
    expect(targetImage().equals(expected)).toBe(true);
    expect(r.progress().blocksMissing).toBe(0);
    const c = r.counters();
    // Every block arrived exactly once, by the copy or on demand, unless fully overwritten first.
    expect(c.bytesCopied + c.bytesReadThrough).toBeLessThanOrEqual(SIZE);
    expect(c.bytesRecopied).toBe(0);
  });

  it('resumes from a cursor after a stop, reopened from disk, without copying any block twice', async () => {
    const traced = wrap(local);
    let r = await replica(traced);
    const abort = new AbortController();
    let chunks = 0;
    const first = await r.copy({
      chunkBlocks: 4,
      startBlock: 0,
      signal: abort.signal,
      onChunk: () => {
        if (++chunks === 3) abort.abort();
      },
    });
    expect(first.done).toBe(false);
    expect(first.cursor).toBeGreaterThanOrEqual(12);
    expect(first.cursor).toBeLessThan(BLOCKS);
    expect(first.blocksDone).toBe(first.bytesCopied / BS);

    r = await reopen(r, traced); // as after a restart: state comes from the files
    expect(r.progress().blocksDone).toBe(first.blocksDone);
    const callsBefore = traced.calls.length;
    const second = await r.copy({ chunkBlocks: 4, startBlock: first.cursor });
    expect(second.done).toBe(true);
    expect(traced.calls[callsBefore][0]).toBe(first.cursor);
    expect(targetImage().equals(original)).toBe(true);

    const fetched = new Map<number, number>();
    for (const [b, n] of traced.calls)
      for (let i = b; i < b + n; i++) fetched.set(i, (fetched.get(i) ?? 0) + 1);
    expect([...fetched.values()].every((n) => n === 1)).toBe(true);
    expect(fetched.size).toBe(BLOCKS);
    expect(r.counters()).toEqual({ bytesCopied: SIZE, bytesReadThrough: 0, bytesRecopied: 0 });
  });

  it('wraps around to pick up missing blocks before the start block', async () => {
    const r = await replica();
    await r.read(0, 1); // block 0 present, the rest missing
    const p = await r.copy({ startBlock: 20, chunkBlocks: 5 });
    expect(p.done).toBe(true);
    expect(targetImage().equals(original)).toBe(true);
    expect(r.counters().bytesCopied).toBe(SIZE - BS);
  });

  it('a past deadline still copies one chunk, so every slice makes progress', async () => {
    const r = await replica();
    const p = await r.copy({ chunkBlocks: 4, deadlineMs: Date.now() - 1000 });
    expect(p).toMatchObject({
      done: false,
      bytesCopied: 4 * BS,
      blocksDone: 4,
      blocksTotal: BLOCKS,
      cursor: 4,
    });
  });

  it('an abort stops a rate-limited copy while it waits for bandwidth', async () => {
    const r = await replica();
    const abort = new AbortController();
    const p = await r.copy({
      bandwidth: () => 1, // 1 byte/s: one single-block chunk, then a very long wait
      signal: abort.signal,
      onChunk: () => setTimeout(() => abort.abort(), 20),
    });
    expect(p.done).toBe(false);
    expect(p.bytesCopied).toBe(BS);
  });

  it('blocks left Copying by a crash are copied again and counted in bytesRecopied; writes survive restarts', async () => {
    let r = await replica();
    await r.copy({ chunkBlocks: 4, deadlineMs: 0 }); // blocks 0..3
    await r.write(20 * BS, Buffer.alloc(BS, 0x55)); // a workload write, acknowledged
    await r.close();

    // What a SIGKILL in the middle of the copy's next chunk leaves: blocks marked Copying, data half written.
    const map = await SyncMap.open(dst.mapPath(VOL));
    await map.setRange(4, 4, BlockState.Copying);
    await map.close();
    const fd = openSync(dst.imagePath(VOL), 'r+');
    writeSync(fd, original.subarray(4 * BS, 5 * BS + 100), 0, BS + 100, 4 * BS);
    closeSync(fd);

    r = await ReplicaVolume.open(dst, VOL, local);
    open.push(r);
    expect(r.blockState(4)).toBe(BlockState.Missing);
    expect(r.blockState(20)).toBe(BlockState.Written);
    const p = await r.copy({ startBlock: 4 });
    expect(p.done).toBe(true);
    const expected = Buffer.from(original);
    Buffer.alloc(BS, 0x55).copy(expected, 20 * BS);
    expect(targetImage().equals(expected)).toBe(true);
    const c = r.counters();
    expect(c.bytesRecopied).toBe(4 * BS);
    expect(c.bytesCopied).toBe(SIZE - BS); // block 20 was written, never copied
  });

  it('verify finds a corrupted target block, sets it Missing, and the next pass repairs it', async () => {
    const r = await replica();
    await r.write(3 * BS, Buffer.alloc(BS, 9));
    expect((await r.copy()).done).toBe(true);

    const fd = openSync(dst.imagePath(VOL), 'r+');
    writeSync(fd, Buffer.from([0x42 ^ original[7 * BS + 11]]), 0, 1, 7 * BS + 11);
    writeSync(fd, Buffer.from([0x42 ^ original[SIZE - 1]]), 0, 1, SIZE - 1); // the partial last block too
    closeSync(fd);

    const report = await r.verify();
    expect(report).toEqual({
      blocksVerified: BLOCKS - 1,
      blocksWrittenOnTarget: 1,
      mismatchedBlocks: [7, BLOCKS - 1],
    });
    expect(r.blockState(7)).toBe(BlockState.Missing);
    expect(r.blockState(BLOCKS - 1)).toBe(BlockState.Missing);

    const p = await r.copy({ startBlock: 30 });
    expect(p.done).toBe(true);
    expect((await r.verify()).mismatchedBlocks).toEqual([]);
    const expected = Buffer.from(original);
    Buffer.alloc(BS, 9).copy(expected, 3 * BS);
    expect(targetImage().equals(expected)).toBe(true);
    expect(r.counters().bytesRecopied).toBe(BS + 1536);
  });

  it('a transfer that arrives corrupted is retried, then fails with DataIntegrity naming volume and blocks', async () => {
    const flaky = wrap(local, { corrupt: (_first, _count, callNo) => callNo === 1 });
    const r1 = await replica(flaky);
    expect((await r1.read(0, 10)).equals(original.subarray(0, 10))).toBe(true); // second attempt was clean
    await r1.close();

    // Any transfer that includes block 8 or later arrives damaged.
    const bad = wrap(local, { corrupt: (first, count) => first + count > 8 });
    const r = await ReplicaVolume.open(dst, VOL, bad);
    open.push(r);
    const failure = await expectFailure(r.read(8 * BS, 10), ErrorType.DataIntegrity);
    expect(failure.message).toContain(VOL);
    expect(failure.message).toContain('blocks 8-8');
    expect(r.blockState(8)).toBe(BlockState.Missing);
    // Chunks 1-4 (clean) then 5-8 (damaged): the copy stops there, nothing damaged is marked present.
    await expectFailure(r.copy({ chunkBlocks: 4 }), ErrorType.DataIntegrity);
    for (let i = 1; i < 5; i++) expect(r.blockState(i)).toBe(BlockState.Copied);
    for (let i = 5; i < BLOCKS; i++) expect(r.blockState(i)).toBe(BlockState.Missing);
    expect(
      targetImage()
        .subarray(5 * BS)
        .equals(Buffer.alloc(SIZE - 5 * BS)),
    ).toBe(true);
  });

  it('finalize turns the replica into a plain volume and is idempotent', async () => {
    const r = await replica();
    await expectFailure(r.finalize(), ErrorType.InvalidState);
    await r.write(0, Buffer.alloc(512, 3));
    await r.copy();
    await r.finalize();
    await r.finalize();
    expect(ReplicaVolume.isReplica(dst, VOL)).toBe(false);
    expect(existsSync(dst.mapPath(VOL))).toBe(false);
    expect(dst.readSidecar(VOL)?.sync).toEqual(r.counters());
    // Still usable after finalize, and openable as a plain volume.
    await r.write(BS, Buffer.alloc(512, 4));
    const expected = Buffer.from(original);
    Buffer.alloc(512, 3).copy(expected, 0);
    Buffer.alloc(512, 4).copy(expected, BS);
    const plain = await dst.openVolume(VOL);
    expect((await plain.read(0, SIZE)).equals(expected)).toBe(true);
    await plain.close();
    expect(dst.readMeta(VOL)).toEqual(META);
  });

  it('export through a replica mid-sync reads through to the source', async () => {
    const r = await replica();
    await r.copy({ chunkBlocks: 4, deadlineMs: 0 });
    const out = path.join(dir, 'export.img');
    const result = await dst.exportImage(r, out);
    expect(readFileSync(out).equals(original)).toBe(true);
    expect(result.sizeBytes).toBe(SIZE);
    expect(r.progress().blocksMissing).toBe(0);
  });

  it('large chunks through the recycled source buffers arrive byte-identical', async () => {
    const big: VolumeMeta = {
      ...META,
      volumeId: 'v-big',
      sizeBytes: 9 * 1024 * 1024 + 512,
      blockSize: 64 * 1024,
    };
    await src.createVolume(big, 'pattern');
    await ReplicaVolume.create(dst, big);
    // Through user space, so the pooled read buffers are what carries the data.
    const r = await ReplicaVolume.open(dst, big.volumeId, { ...local, copyBlocksInto: undefined });
    open.push(r);
    const writes = (async () => {
      for (let k = 0; k < 20; k++) await r.write(k * 450_000, Buffer.alloc(4096, k + 1));
    })();
    const p = await r.copy({ chunkBlocks: 16 }); // 1 MiB chunks: pooled buffers are reused
    await writes;
    expect(p.done).toBe(true);
    const expected = patternBytes('vol:v-big', big.sizeBytes);
    for (let k = 0; k < 20; k++) Buffer.alloc(4096, k + 1).copy(expected, k * 450_000);
    expect(readFileSync(dst.imagePath(big.volumeId)).equals(expected)).toBe(true);
    expect((await r.verify()).mismatchedBlocks).toEqual([]);
  });

  it("the background copy uses the source's in-kernel copy: no block is read into user space", async () => {
    expect(typeof local.copyBlocksInto).toBe('function'); // Linux: copy_file_range through koffi
    const kernelRuns: [number, number][] = [];
    const source: TestSource = {
      ...wrap(local),
      copyBlocksInto: (volumeId, first, count, into) => {
        kernelRuns.push([first, count]);
        return local.copyBlocksInto!(volumeId, first, count, into);
      },
    };
    const r = await replica(source);
    await r.write(5 * BS + 100, Buffer.alloc(300, 0xab)); // partial write: its block is fetched
    const p = await r.copy({ chunkBlocks: 8 });
    expect(p.done).toBe(true);
    expect(source.calls).toEqual([[5, 1]]);
    expect(kernelRuns.reduce((n, [, c]) => n + c, 0)).toBe(BLOCKS - 1);
    const expected = Buffer.from(original);
    Buffer.alloc(300, 0xab).copy(expected, 5 * BS + 100);
    expect(targetImage().equals(expected)).toBe(true);
    expect(r.counters().bytesCopied).toBe(SIZE - BS);
    const report = await r.verify();
    expect(report.mismatchedBlocks).toEqual([]);
    expect(report.blocksVerified).toBe(BLOCKS - 1);
  });

  it('an in-kernel copy that fails falls back to fetching, hash-checked, for the rest of the copy', async () => {
    let attempts = 0;
    const source: TestSource = {
      ...wrap(local),
      copyBlocksInto: () => {
        attempts++;
        return Promise.reject(new Error('EXDEV'));
      },
    };
    const r = await replica(source);
    const p = await r.copy({ chunkBlocks: 8 });
    expect(p.done).toBe(true);
    expect(attempts).toBe(1);
    expect(source.calls.reduce((n, [, c]) => n + c, 0)).toBe(BLOCKS);
    expect(targetImage().equals(original)).toBe(true);
  });

  it("kernelCopy copies a byte range between files and refuses to run past the source's end", async () => {
    const from = openSync(src.imagePath(VOL), 'r');
    const to = openSync(path.join(dir, 'copy.img'), 'w+');
    try {
      await kernelCopy(from, 1000, to, 10, 5000);
      expect(readFileSync(path.join(dir, 'copy.img')).subarray(10)).toEqual(original.subarray(1000, 6000));
      await expect(kernelCopy(from, SIZE - 10, to, 0, 20)).rejects.toThrow(/source ended after 10 of 20/);
    } finally {
      closeSync(from);
      closeSync(to);
    }
  });

  it('the source hashes blocks one by one, the last one partial', async () => {
    const hashes = await local.hashBlocks(VOL, BLOCKS - 2, 2);
    expect(hashes).toHaveLength(2);
    const r = await replica();
    await r.copy();
    const report = await r.verify();
    expect(report.blocksVerified).toBe(BLOCKS);
    expect(report.mismatchedBlocks).toEqual([]);
    await expectFailure(local.readBlocks(VOL, BLOCKS - 1, 2), ErrorType.InvalidInput);
    await expectFailure(local.readBlocks('../x', 0, 1), ErrorType.InvalidInput);
  });
});
