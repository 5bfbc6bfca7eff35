import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { BlockDevice } from '../../src/fleet/block-device';
import { HostStore } from '../../src/fleet/host-store';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { Workload, type WorkloadVolume } from '../../src/fleet/workload';
import { lastLoggedSeq, readWorkloadLog, workloadLogPath, writeSeed } from '../../src/fleet/workload-log';

const KiB = 1024;
const MiB = 1024 * KiB;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('Workload', () => {
  let dataDir: string;
  let store: HostStore;
  const devices = new Map<string, BlockDevice>();
  const workloads: Workload[] = [];

  const volumes: WorkloadVolume[] = [
    { volumeId: 'i-1-v0', sizeBytes: 1 * MiB, userData: false },
    { volumeId: 'i-1-v1', sizeBytes: 512 * KiB, userData: false },
    { volumeId: 'i-1-data', sizeBytes: 256 * KiB, userData: true },
  ];

  beforeEach(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-workload-'));
    store = new HostStore(dataDir, 'h-1');
    for (const v of volumes) {
      await store.createVolume({ ...v, instanceId: 'i-1', blockSize: 64 * KiB }, 'pattern');
      devices.set(v.volumeId, await store.openVolume(v.volumeId));
    }
  });

  afterEach(async () => {
    for (const w of workloads.splice(0)) await w.stop();
    for (const d of devices.values()) await d.close();
    devices.clear();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  function workload(
    writeBytesPerSec: number,
    writeSize = 4 * KiB,
    device?: (id: string) => Promise<BlockDevice>,
  ) {
    const w = new Workload({
      instanceId: 'i-1',
      hostId: 'h-1',
      dataDir,
      config: { writeBytesPerSec, writeSize },
      volumes,
      device: device ?? (async (id) => devices.get(id)!),
      tickMs: 5,
    });
    workloads.push(w);
    return w;
  }

  /** Initial pattern of a volume overlaid with every logged write to it, in seq order. */
  function expectedImage(v: WorkloadVolume): Buffer {
    const image = patternBytes(volumePatternSeed(v.volumeId), v.sizeBytes);
    for (const e of readWorkloadLog(dataDir, 'i-1')) {
      if (e.volume === v.volumeId) patternBytes(writeSeed('i-1', e.seq), e.length).copy(image, e.offset);
    }
    return image;
  }

  test('writes at roughly the configured rate and logs every write with consecutive seqs', async () => {
    const w = workload(1 * MiB); // 256 writes/s
    const resumed = await w.resume(1);
    expect(resumed.firstWriteAtMs).not.toBeNull();
    await sleep(600);
    const { lastSeq } = await w.pause();
    const log = readWorkloadLog(dataDir, 'i-1');
    expect(log.map((e) => e.seq)).toEqual(Array.from({ length: log.length }, (_, i) => i + 1));
    expect(lastSeq).toBe(log.length);
    // About 150 writes are owed; the bounds only catch a loop that stalls or runs away.
    expect(log.length).toBeGreaterThan(40);
    expect(log.length).toBeLessThan(400);
    for (const e of log) {
      expect(e.host).toBe('h-1');
      expect(e.length).toBe(4 * KiB);
      expect(e.offset % (4 * KiB)).toBe(0);
      const v = volumes.find((x) => x.volumeId === e.volume)!;
      expect(e.offset + e.length).toBeLessThanOrEqual(v.sizeBytes);
      expect(typeof e.t).toBe('number');
    }
    for (let i = 1; i < log.length; i++) expect(log[i].t).toBeGreaterThanOrEqual(log[i - 1].t);
    expect(lastLoggedSeq(dataDir, 'i-1')).toBe(lastSeq);
  });

  test('pause stops writing; resume continues the seqs right away', async () => {
    const w = workload(2 * MiB);
    await w.resume(1);
    await sleep(100);
    const paused = await w.pause();
    expect(w.state).toBe('paused');
    const countAtPause = readWorkloadLog(dataDir, 'i-1').length;
    expect(paused.lastSeq).toBe(countAtPause);
    expect(paused.lastWriteAtMs).not.toBeNull();
    await sleep(60);
    expect(readWorkloadLog(dataDir, 'i-1').length).toBe(countAtPause);
    // Pausing again changes nothing.
    expect((await w.pause()).lastSeq).toBe(paused.lastSeq);

    const resumed = await w.resume(paused.lastSeq + 1);
    // The first write is made before resume() returns.
    expect(resumed.firstWriteAtMs).not.toBeNull();
    expect(readWorkloadLog(dataDir, 'i-1').length).toBe(countAtPause + 1);
    await sleep(100);
    await w.stop();
    const seqs = readWorkloadLog(dataDir, 'i-1').map((e) => e.seq);
    expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, i) => i + 1));
    expect(seqs.length).toBeGreaterThan(countAtPause + 1);
  });

  test('image bytes regenerate from the log; user-data volumes are never written', async () => {
    const w = workload(4 * MiB, 8 * KiB);
    await w.resume(1);
    await sleep(300);
    await w.stop();
    const log = readWorkloadLog(dataDir, 'i-1');
    expect(log.length).toBeGreaterThan(10);
    expect(log.some((e) => e.volume === 'i-1-data')).toBe(false);
    for (const v of volumes) {
      const image = fs.readFileSync(store.imagePath(v.volumeId));
      expect(image.equals(expectedImage(v))).toBe(true);
    }
    const userData = fs.readFileSync(store.imagePath('i-1-data'));
    expect(userData.equals(patternBytes(volumePatternSeed('i-1-data'), 256 * KiB))).toBe(true);
  });

  test('a zero rate resumes without writing', async () => {
    const w = workload(0);
    const resumed = await w.resume(7);
    expect(resumed.firstWriteAtMs).toBeNull();
    await sleep(50);
    const paused = await w.pause();
    expect(paused.lastSeq).toBe(6);
    expect(paused.lastWriteAtMs).toBeNull();
    expect(fs.existsSync(workloadLogPath(dataDir, 'i-1'))).toBe(false);
  });

  test('a failing first write rejects resume and leaves the workload paused', async () => {
    const broken = async (): Promise<BlockDevice> => {
      throw new Error('disk gone');
    };
    const w = workload(1 * MiB, 4 * KiB, broken);
    await expect(w.resume(1)).rejects.toThrow('disk gone');
    expect(w.state).toBe('paused');
    expect(readWorkloadLog(dataDir, 'i-1')).toEqual([]);
  });

  test('a torn last log line is ignored by the readers', async () => {
    const w = workload(2 * MiB);
    await w.resume(1);
    await sleep(50);
    const { lastSeq } = await w.stop();
    fs.appendFileSync(workloadLogPath(dataDir, 'i-1'), '{"seq":99999,"t":1');
    expect(readWorkloadLog(dataDir, 'i-1').length).toBe(lastSeq);
    expect(lastLoggedSeq(dataDir, 'i-1')).toBe(lastSeq);
    // A later writer starts on a fresh line, so its entries are not lost to the torn one.
    const next = workload(2 * MiB);
    await next.resume(lastSeq + 1);
    await next.stop();
    expect(readWorkloadLog(dataDir, 'i-1').map((e) => e.seq)).toContain(lastSeq + 1);
  });
});
