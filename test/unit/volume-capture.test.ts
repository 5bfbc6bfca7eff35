import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { InstanceLaunch } from '../../src/contracts';
import { FleetRuntime } from '../../src/fleet/fleet-runtime';
import type { HostAgent } from '../../src/fleet/host-agent';
import { HostStore } from '../../src/fleet/host-store';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import type { BlockDevice } from '../../src/fleet/block-device';
import { readFileRange, type PatchedRange } from '../../src/fleet/file-range';
import { Volume } from '../../src/fleet/volume';
import { VolumeCapture, capturesDir } from '../../src/fleet/volume-capture';
import { overlayLoggedWrites, readWorkloadLog } from '../../src/fleet/workload-log';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function launchOf(instanceId: string, sizeBytes: number, writeBytesPerSec = 8 * MiB, blockSize = BLOCK) {
  const launch: InstanceLaunch = {
    instanceId,
    account: 'acct-1',
    volumes: [{ volumeId: `${instanceId}-v0`, sizeBytes, blockSize, userData: false }],
    workload: { writeBytesPerSec, writeSize: 4 * KiB },
  };
  return launch;
}

/** 600 writes of 1 byte up to 3 blocks each at random offsets, all in flight at once. */
function racingWrites(capture: VolumeCapture, size: number, blockSize: number): Promise<void>[] {
  return Array.from({ length: 600 }, () => {
    const length = 1 + crypto.randomInt(3 * blockSize);
    return capture.device.write(crypto.randomInt(size - length), crypto.randomBytes(length));
  });
}

/** The first block of every `blocks`-block range of the volume, in random order. */
function shuffledRanges(size: number, blockSize: number, blocks: number): number[] {
  return Array.from({ length: size / blockSize / blocks }, (_, i) => i * blocks).sort(
    () => Math.random() - 0.5,
  );
}

/** A pid no process has any more: that of a child that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '']);
  return child.pid!;
}

describe('volume capture', () => {
  let dataDir: string;
  let runtime: FleetRuntime;

  beforeEach(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-capture-'));
    runtime = new FleetRuntime({ dataDir, workloadTickMs: 5 });
  });

  afterEach(async () => {
    await runtime.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  /** The volume as of `atSeq`: its initial pattern overlaid with the logged writes up to that seq. */
  function imageAt(instanceId: string, volumeId: string, sizeBytes: number, atSeq = Infinity): Buffer {
    const log = readWorkloadLog(dataDir, instanceId).filter((e) => e.seq <= atSeq);
    return overlayLoggedWrites(
      patternBytes(volumePatternSeed(volumeId), sizeBytes),
      instanceId,
      volumeId,
      log,
    );
  }

  /** Every block of the capture, read in chunks with a nap between them so the workload writes on. */
  async function readAll(capture: VolumeCapture, chunkBlocks: number, napMs: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let first = 0; first < capture.blockCount; first += chunkBlocks) {
      parts.push(await capture.readBlocks(first, Math.min(chunkBlocks, capture.blockCount - first)));
      await sleep(napMs);
    }
    return Buffer.concat(parts);
  }

  function writesAfter(instanceId: string, volumeId: string, seq: number): number {
    return readWorkloadLog(dataDir, instanceId).filter((e) => e.volume === volumeId && e.seq > seq).length;
  }

  function spillFiles(hostId: string): string[] {
    const dir = capturesDir(new HostStore(dataDir, hostId).root);
    return fs.existsSync(dir) ? fs.readdirSync(dir) : [];
  }

  /** Stops the workload's writes so the live image can be compared with the whole log. */
  async function quiesce(agent: HostAgent, instanceId: string): Promise<void> {
    await agent.workload(instanceId)!.pause();
  }

  test('the capture equals the volume as of its instant while the workload keeps writing, spilling what exceeds memory', async () => {
    const h1 = await runtime.host('h-1');
    const launch = launchOf('i-1', 64 * MiB);
    await h1.launch(launch);
    await sleep(200);

    const capture = await h1.openCapture('i-1', 'i-1-v0', 'c-1', { memoryBytes: 2 * MiB });
    expect(capture.atSeq).toBeGreaterThan(0);
    expect(Number.isFinite(capture.pausedMs) && capture.pausedMs >= 0).toBe(true);
    const captured = await readAll(capture, 16, 15);

    const stats = capture.stats();
    expect(stats.blocksRead).toBe((64 * MiB) / BLOCK);
    expect(stats.blocksHeld).toBe(0);
    expect(stats.blocksPreserved).toBeGreaterThan(0);
    expect(stats.blocksSpilled).toBeGreaterThan(0);
    expect(spillFiles('h-1')).toHaveLength(1);
    // The workload really wrote during the capture, so a copy of the live image would differ.
    expect(writesAfter('i-1', 'i-1-v0', capture.atSeq)).toBeGreaterThan(100);

    const expected = imageAt('i-1', 'i-1-v0', 64 * MiB, capture.atSeq);
    expect(captured.equals(expected)).toBe(true);
    await capture.close();
    expect(spillFiles('h-1')).toEqual([]);
  });

  test('writes after the instant land in the live volume, not in the capture', async () => {
    const h1 = await runtime.host('h-1');
    await h1.launch(launchOf('i-1', 4 * MiB, 4 * MiB));
    await sleep(100);
    const capture = await h1.openCapture('i-1', 'i-1-v0', 'c-1');
    await sleep(300);
    const captured = await readAll(capture, 8, 5);
    await quiesce(h1, 'i-1');
    const after = writesAfter('i-1', 'i-1-v0', capture.atSeq);
    expect(after).toBeGreaterThan(20);

    const live = await (await h1.device('i-1-v0')).read(0, 4 * MiB);
    expect(live.equals(imageAt('i-1', 'i-1-v0', 4 * MiB))).toBe(true);
    expect(captured.equals(imageAt('i-1', 'i-1-v0', 4 * MiB, capture.atSeq))).toBe(true);
    expect(captured.equals(live)).toBe(false);
    await capture.close();
  });

  test('a capture of a replica mid-sync reads what it lacks from the source, with the copy running', async () => {
    const h1 = await runtime.host('h-1');
    const h2 = await runtime.host('h-2');
    const launch = launchOf('i-2', 16 * MiB, 4 * MiB);
    await h1.launch(launch);
    await sleep(100);
    await h2.prepareTarget('m-1', 'h-1', launch);
    await h2.switchIn('m-1', 'i-2', 'h-1');
    const replica = await h2.replica('i-2-v0');
    await replica.copy({ maxMs: 0, chunkBlocks: 4 });
    expect(replica.progress().blocksMissing).toBeGreaterThan(64);

    const capture = await h2.openCapture('i-2', 'i-2-v0', 'c-1', { memoryBytes: 256 * KiB });
    const copying = replica.copy({ chunkBlocks: 8, bandwidth: () => 8 * MiB });
    const captured = await readAll(capture, 8, 10);
    await copying;
    expect(writesAfter('i-2', 'i-2-v0', capture.atSeq)).toBeGreaterThan(10);
    expect(capture.stats().blocksPreserved).toBeGreaterThan(0);
    expect(captured.equals(imageAt('i-2', 'i-2-v0', 16 * MiB, capture.atSeq))).toBe(true);
    await capture.close();
    // The replica is still the volume's device for the sync once the capture is gone.
    expect(await h2.replica('i-2-v0')).toBe(replica);
  });

  test('close removes the hook: later writes are not preserved and the capture cannot be read', async () => {
    const h1 = await runtime.host('h-1');
    await h1.launch(launchOf('i-1', 4 * MiB, 4 * MiB));
    const capture = await h1.openCapture('i-1', 'i-1-v0', 'c-1', { memoryBytes: 0 });
    expect(await h1.device('i-1-v0')).toBe(capture.device);
    await capture.readBlocks(0, 4);
    await sleep(150);
    expect(capture.stats().blocksPreserved).toBeGreaterThan(0);
    expect(spillFiles('h-1')).toHaveLength(1);

    await capture.close();
    const frozen = capture.stats();
    expect(frozen.blocksHeld).toBe(0);
    expect(spillFiles('h-1')).toEqual([]);
    expect(await h1.device('i-1-v0')).toBeInstanceOf(Volume);
    await sleep(150);
    expect(capture.stats()).toEqual(frozen);
    await expect(capture.readBlocks(8, 1)).rejects.toMatchObject({
      type: 'InvalidState',
      message: expect.stringMatching(/c-1 .* is closed/),
    });
    // The agent forgets it too: another capture id is welcome now.
    const next = await h1.openCapture('i-1', 'i-1-v0', 'c-2');
    expect(next.atSeq).toBeGreaterThanOrEqual(capture.atSeq);
    await h1.closeCapture('i-1-v0', 'c-2');
    expect(next.isOpen).toBe(false);
  });

  test('one capture per volume: another id is refused, the same id takes a new instant', async () => {
    const h1 = await runtime.host('h-1');
    await h1.launch(launchOf('i-1', 4 * MiB, 4 * MiB));
    const first = await h1.openCapture('i-1', 'i-1-v0', 'c-1');
    await expect(h1.openCapture('i-1', 'i-1-v0', 'c-2')).rejects.toMatchObject({
      type: 'InvalidState',
      nonRetryable: true,
      message: expect.stringContaining('already has capture c-1 open'),
    });
    expect(first.isOpen).toBe(true);
    await sleep(100);

    const again = await h1.openCapture('i-1', 'i-1-v0', 'c-1');
    expect(first.isOpen).toBe(false);
    expect(again.atSeq).toBeGreaterThan(first.atSeq);
    await expect(first.readBlocks(0, 1)).rejects.toMatchObject({ type: 'InvalidState' });
    const captured = await readAll(again, 16, 5);
    expect(captured.equals(imageAt('i-1', 'i-1-v0', 4 * MiB, again.atSeq))).toBe(true);
    await again.close();
  });

  test('pausedMs and the instant are reported, and a paused instance is captured without resuming it', async () => {
    const h1 = await runtime.host('h-1');
    await h1.launch(launchOf('i-1', 8 * MiB));
    await sleep(50);
    const capture = await h1.openCapture('i-1', 'i-1-v0', 'c-1');
    expect(typeof capture.pausedMs).toBe('number');
    expect(capture.pausedMs).toBeGreaterThanOrEqual(0);
    expect(capture.atMs).toBeGreaterThan(0);
    const log = readWorkloadLog(dataDir, 'i-1');
    expect(log.some((e) => e.seq === capture.atSeq)).toBe(true);
    expect(h1.workload('i-1')?.state).toBe('running');
    await capture.close();

    const paused = await h1.pauseForSwitch('i-1', 'm-9', 'h-2');
    const still = await h1.openCapture('i-1', 'i-1-v0', 'c-2');
    expect(still.atSeq).toBe(paused.lastSeq);
    expect(h1.workload('i-1')?.state).toBe('paused');
    await still.close();
  });

  test('a block is handed out once unless kept; bad input fails fast and opens nothing', async () => {
    const h1 = await runtime.host('h-1');
    await h1.launch(launchOf('i-1', 1 * MiB, 0));
    await expect(h1.openCapture('i-1', 'i-1-v0', 'Bad_Id')).rejects.toMatchObject({ type: 'InvalidInput' });
    await expect(h1.openCapture('i-1', 'i-9-v0', 'c-1')).rejects.toMatchObject({ type: 'NotFound' });
    await expect(h1.openCapture('i-9', 'i-1-v0', 'c-1')).rejects.toMatchObject({ type: 'NotFound' });
    await expect(h1.openCapture('i-1', 'i-1-v0', 'c-1', { memoryBytes: -1 })).rejects.toMatchObject({
      type: 'InvalidInput',
    });
    expect(await h1.device('i-1-v0')).toBeInstanceOf(Volume);

    const capture = await h1.openCapture('i-1', 'i-1-v0', 'c-1');
    const kept = await capture.readBlocks(0, 2, { keep: true });
    expect((await capture.readBlocks(0, 2)).equals(kept)).toBe(true);
    await expect(capture.readBlocks(1, 1)).rejects.toMatchObject({
      type: 'InvalidState',
      message: expect.stringContaining('already handed out block 1'),
    });
    await capture.readBlocks(4, 2, { keep: true });
    await capture.release(4, 2);
    await expect(capture.readBlocks(5, 1)).rejects.toMatchObject({ type: 'InvalidState' });
    await expect(capture.readBlocks(16, 1)).rejects.toMatchObject({ type: 'InvalidInput' });
    await capture.close();
  });

  test('spill files a killed process left are removed at agent start and when the capture id is reopened', async () => {
    const store = new HostStore(dataDir, 'h-1');
    const dir = capturesDir(store.root);
    fs.mkdirSync(dir, { recursive: true });
    const pid = deadPid();
    const stale = path.join(dir, `i-1-v0.c-old.${pid}.spill`);
    const foreign = path.join(dir, `i-1-v0.c-live.${process.ppid}.spill`);
    fs.writeFileSync(stale, 'x');
    fs.writeFileSync(foreign, 'x');
    const h1 = await runtime.host('h-1');
    expect(fs.existsSync(stale)).toBe(false);
    // A live process's file may belong to a capture in progress there.
    expect(fs.existsSync(foreign)).toBe(true);
    fs.rmSync(foreign);

    await h1.launch(launchOf('i-1', 1 * MiB, 0));
    const again = path.join(dir, `i-1-v0.c-1.${pid}.spill`);
    const other = path.join(dir, `i-1-v0.c-2.${pid}.spill`);
    fs.writeFileSync(again, 'x');
    fs.writeFileSync(other, 'x');
    const capture = await h1.openCapture('i-1', 'i-1-v0', 'c-1');
    expect(fs.existsSync(again)).toBe(false);
    expect(fs.existsSync(other)).toBe(true);
    await capture.close();
  });
});

describe('VolumeCapture under concurrent writes and reads', () => {
  let dataDir: string;

  beforeEach(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-capture-race-'));
  });

  afterEach(() => {
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  async function captured(blockSize: number, size: number, memoryBytes: number) {
    const store = new HostStore(dataDir, 'h-1');
    await store.createVolume(
      { volumeId: 'v-1', instanceId: 'i-1', sizeBytes: size, blockSize, userData: false },
      'pattern',
    );
    const volume = await store.openVolume('v-1');
    const before = await volume.read(0, size);
    const capture = new VolumeCapture({
      captureId: 'c-1',
      hostId: 'h-1',
      device: volume,
      spillDir: capturesDir(store.root),
      options: { memoryBytes },
    });
    capture.begin(0, Date.now());
    return { volume, before, capture };
  }

  /** What a lent range reads as: the file's bytes with the overrides laid over them. */
  async function materialize({ range, overrides }: PatchedRange): Promise<Buffer> {
    const data = await readFileRange(range);
    for (const [offset, old] of overrides) old.copy(data, offset);
    return data;
  }

  test('reads racing unaligned multi-block writes still return the content at the instant', async () => {
    const size = 1 * MiB;
    const blockSize = 4 * KiB;
    const { volume, before, capture } = await captured(blockSize, size, 64 * KiB);
    try {
      const writes = racingWrites(capture, size, blockSize);
      const order = shuffledRanges(size, blockSize, 8);
      const reads = order.map(async (first) => ({ first, data: await capture.readBlocks(first, 8) }));
      const [, parts] = await Promise.all([Promise.all(writes), Promise.all(reads)]);
      for (const { first, data } of parts) {
        const at = first * blockSize;
        expect(data.equals(before.subarray(at, at + data.length))).toBe(true);
      }
      const stats = capture.stats();
      expect(stats.blocksPreserved).toBeGreaterThan(0);
      expect(stats.blocksSpilled).toBeGreaterThan(0);
      // Every block was read, so nothing may stay preserved (a read and a preserve never interleave).
      expect(stats.blocksHeld).toBe(0);
      expect(stats.memoryBytes).toBe(0);
      expect((await volume.read(0, size)).equals(before)).toBe(false);
      await capture.close();
    } finally {
      await volume.close();
    }
  });

  test('ranges lent in place racing writes read as the content at the instant', async () => {
    const size = 1 * MiB;
    const blockSize = 4 * KiB;
    const { volume, before, capture } = await captured(blockSize, size, 64 * KiB);
    try {
      expect(capture.lendsInPlace).toBe(true);
      const writes = racingWrites(capture, size, blockSize);
      const order = shuffledRanges(size, blockSize, 8);
      let overridden = 0;
      const lends = order.map((first) =>
        capture.lendBlocks(first, 8, async (lent) => {
          overridden += lent.overrides.size;
          expect(lent.range.position).toBe(first * blockSize);
          return { first, data: await materialize(lent) };
        }),
      );
      const [, parts] = await Promise.all([Promise.all(writes), Promise.all(lends)]);
      for (const { first, data } of parts) {
        const at = first * blockSize;
        expect(data.equals(before.subarray(at, at + data.length))).toBe(true);
      }
      expect(overridden).toBeGreaterThan(0); // some blocks were written before their lend
      expect(capture.stats().blocksSpilled).toBeGreaterThan(0); // and some of those came back from the spill file
      expect(capture.stats().blocksHeld).toBe(0);
      await expect(capture.lendBlocks(0, 1, async () => undefined)).rejects.toThrow(
        /already handed out block 0/,
      );
      await capture.close();
    } finally {
      await volume.close();
    }
  });

  /** Lends blocks 2-3 of a 1 MiB volume and holds them until `done` is called. */
  async function heldLend(capture: VolumeCapture) {
    let done!: () => void;
    const held = new Promise<void>((resolve) => (done = resolve));
    let lent!: PatchedRange;
    let borrowed!: () => void;
    const borrowing = new Promise<void>((resolve) => (borrowed = resolve));
    const lend = capture.lendBlocks(2, 2, async (range) => {
      lent = range;
      borrowed();
      await held;
      return materialize(range);
    });
    await borrowing;
    return { lend, done, overrides: () => lent.overrides };
  }

  test("a write to a lent block lands at once, its old content in the lend's overrides first", async () => {
    const { volume, before, capture } = await captured(BLOCK, 1 * MiB, MiB);
    try {
      const { lend, done, overrides } = await heldLend(capture);
      // Both land while the borrower still holds the blocks: neither waits for it.
      await capture.device.write(2 * BLOCK + 100, Buffer.alloc(10, 0xee));
      await capture.device.write(2 * BLOCK + 200, Buffer.alloc(10, 0xdd));
      expect((await volume.read(2 * BLOCK + 100, 10)).equals(Buffer.alloc(10, 0xee))).toBe(true);
      // The first write kept the block as it was at the instant; the second kept nothing more.
      expect([...overrides().keys()]).toEqual([0]);
      expect(
        overrides()
          .get(0)!
          .equals(before.subarray(2 * BLOCK, 3 * BLOCK)),
      ).toBe(true);
      done();
      expect((await lend).equals(before.subarray(2 * BLOCK, 4 * BLOCK))).toBe(true);
      expect(capture.stats()).toMatchObject({ blocksPreserved: 1, blocksHeld: 0, memoryBytes: 0 });
      await capture.close();
    } finally {
      await volume.close();
    }
  });

  test("over the capture's memory, a write to a lent block waits until the borrower is done", async () => {
    const { volume, before, capture } = await captured(BLOCK, 1 * MiB, 0);
    try {
      const { lend, done, overrides } = await heldLend(capture);
      let written = false;
      const write = capture.device
        .write(2 * BLOCK + 100, Buffer.alloc(10, 0xee))
        .then(() => (written = true));
      await sleep(30);
      expect(written).toBe(false);
      expect(overrides().size).toBe(0);
      done();
      const [lentBytes] = await Promise.all([lend, write]);
      expect(lentBytes.equals(before.subarray(2 * BLOCK, 4 * BLOCK))).toBe(true);
      expect((await volume.read(2 * BLOCK + 100, 10)).equals(Buffer.alloc(10, 0xee))).toBe(true);
      await capture.close();
    } finally {
      await volume.close();
    }
  });

  test('a borrower that fails leaves its blocks as of the instant for the next one', async () => {
    const { volume, before, capture } = await captured(BLOCK, 1 * MiB, MiB);
    try {
      const failing = capture.lendBlocks(2, 2, async () => {
        await capture.device.write(2 * BLOCK, Buffer.alloc(BLOCK, 0xee)); // kept in this lend's overrides
        throw new Error('store failed');
      });
      await expect(failing).rejects.toThrow('store failed');
      // Block 3 was never written: pending again, so this write keeps it in the capture.
      await capture.device.write(3 * BLOCK, Buffer.alloc(BLOCK, 0xdd));
      const again = await capture.lendBlocks(2, 2, async (lent) => materialize(lent));
      expect(again.equals(before.subarray(2 * BLOCK, 4 * BLOCK))).toBe(true);
      expect(capture.stats()).toMatchObject({ blocksRead: 2, blocksHeld: 0, memoryBytes: 0 });
      await capture.close();
    } finally {
      await volume.close();
    }
  });

  test('a device that is not one plain file is read, never lent', async () => {
    const { volume, capture: plain } = await captured(BLOCK, 1 * MiB, MiB);
    await plain.close();
    try {
      // What a replica reading through to its source looks like to a capture: no file.
      const device: BlockDevice = {
        volumeId: volume.volumeId,
        sizeBytes: volume.sizeBytes,
        blockSize: volume.blockSize,
        read: (offset, length, into) => volume.read(offset, length, into),
        write: (offset, data) => volume.write(offset, data),
        close: async () => undefined,
      };
      const capture = new VolumeCapture({ captureId: 'c-2', hostId: 'h-1', device, spillDir: dataDir });
      capture.begin(0, Date.now());
      expect(capture.lendsInPlace).toBe(false);
      await expect(capture.lendBlocks(0, 1, async () => undefined)).rejects.toThrow(/not one plain file/);
      await capture.close();
    } finally {
      await volume.close();
    }
  });
});
