import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createHostActivities, type HostActivities } from '../../src/activities/host-activities';
import type { InstanceLaunch, SwitchResult } from '../../src/contracts';
import { FleetRuntime } from '../../src/fleet/fleet-runtime';
import type { InstanceRecord } from '../../src/fleet/host-agent';
import { HostStore } from '../../src/fleet/host-store';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { overlayLoggedWrites, readWorkloadLog } from '../../src/fleet/workload-log';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function launchOf(
  instanceId: string,
  writeBytesPerSec = 2 * MiB,
  sizes = [1 * MiB, 512 * KiB],
): InstanceLaunch {
  return {
    instanceId,
    account: 'acct-1',
    volumes: sizes.map((sizeBytes, i) => ({
      volumeId: `${instanceId}-v${i}`,
      sizeBytes,
      blockSize: BLOCK,
      userData: false,
    })),
    workload: { writeBytesPerSec, writeSize: 4 * KiB },
  };
}

describe('host activities', () => {
  let dataDir: string;
  let runtime: FleetRuntime;

  beforeEach(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-host-acts-'));
    runtime = new FleetRuntime({ dataDir, workloadTickMs: 5 });
  });

  afterEach(async () => {
    await runtime.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  async function acts(hostId: string, rt = runtime): Promise<HostActivities> {
    return createHostActivities(await rt.host(hostId));
  }

  function store(hostId: string): HostStore {
    return new HostStore(dataDir, hostId);
  }

  function record(hostId: string, instanceId: string): InstanceRecord | undefined {
    const file = path.join(dataDir, 'hosts', hostId, 'instances', `${instanceId}.json`);
    return fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as InstanceRecord) : undefined;
  }

  function seqs(instanceId: string): number[] {
    return readWorkloadLog(dataDir, instanceId).map((e) => e.seq);
  }

  function expectConsecutive(values: number[]): void {
    expect(values).toEqual(Array.from({ length: values.length }, (_, i) => i + 1));
  }

  /** Initial pattern overlaid with every logged write to the volume, in seq order. */
  function expectedImage(instanceId: string, volumeId: string, sizeBytes: number): Buffer {
    const initial = patternBytes(volumePatternSeed(volumeId), sizeBytes);
    return overlayLoggedWrites(initial, instanceId, volumeId, readWorkloadLog(dataDir, instanceId));
  }

  async function syncUntilDone(
    a: HostActivities,
    launch: InstanceLaunch,
    migrationId = 'm-1',
  ): Promise<void> {
    for (const volume of launch.volumes) {
      for (let slice = 0; ; slice++) {
        const result = await a.syncVolumeSlice({
          migrationId,
          volumeId: volume.volumeId,
          sourceHostId: 'h-1',
          bandwidthBytesPerSec: 0,
          maxSliceMs: 50,
        });
        expect(result.blocksTotal).toBe(volume.sizeBytes / BLOCK);
        if (result.done) break;
        expect(slice).toBeLessThan(1000);
      }
    }
  }

  async function prepareAndSwitch(
    launch: InstanceLaunch,
  ): Promise<{ a1: HostActivities; a2: HostActivities; sw: SwitchResult }> {
    const a1 = await acts('h-1');
    const a2 = await acts('h-2');
    await a1.launchInstances([launch]);
    await a2.prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-1', launch });
    const sw = await a2.switchToTarget({
      migrationId: 'm-1',
      instanceId: launch.instanceId,
      sourceHostId: 'h-1',
    });
    return { a1, a2, sw };
  }

  test('launchInstances creates volumes, runs the workload, and is a no-op when retried', async () => {
    const launch = launchOf('i-1');
    launch.volumes.push({ volumeId: 'i-1-data', sizeBytes: 256 * KiB, blockSize: BLOCK, userData: true });
    const a1 = await acts('h-1');
    const first = await a1.launchInstances([launch]);
    expect(first).toEqual([{ instanceId: 'i-1', volumes: 2 }]);
    await sleep(100);
    const again = await a1.launchInstances([launch]);
    expect(again).toEqual(first);
    await sleep(100);
    expect(store('h-1').listVolumes()).toEqual(['i-1-v0', 'i-1-v1']);
    expect(record('h-1', 'i-1')?.state).toBe('running');
    const log = readWorkloadLog(dataDir, 'i-1');
    expect(log.length).toBeGreaterThan(5);
    expectConsecutive(log.map((e) => e.seq));
    expect(log.every((e) => e.host === 'h-1' && e.volume !== 'i-1-data')).toBe(true);
  });

  test('bad input fails non-retryable and changes nothing', async () => {
    const a1 = await acts('h-1');
    const bad = launchOf('../x');
    await expect(a1.launchInstances([launchOf('i-1'), bad])).rejects.toMatchObject({
      type: 'InvalidInput',
      nonRetryable: true,
    });
    const oddSize = launchOf('i-2', 1 * MiB, [1000]);
    await expect(a1.launchInstances([oddSize])).rejects.toMatchObject({ type: 'InvalidInput' });
    const bigWrites = { ...launchOf('i-3'), workload: { writeBytesPerSec: MiB, writeSize: 2 * MiB } };
    await expect(a1.launchInstances([bigWrites])).rejects.toMatchObject({
      type: 'InvalidInput',
      message: expect.stringMatching(/^instance i-3 workload\.writeSize 2097152 is not allowed/),
    });
    await expect(a1.launchInstances([launchOf('i-4', 0.5)])).rejects.toMatchObject({
      type: 'InvalidInput',
      message: expect.stringMatching(/^instance i-4 workload\.writeBytesPerSec 0\.5 is not allowed/),
    });
    expect(store('h-1').listVolumes()).toEqual([]);
    expect(fs.existsSync(path.join(dataDir, 'hosts', 'h-1', 'instances'))).toBe(false);

    const a2 = await acts('h-2');
    await expect(
      a2.prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-2', launch: launchOf('i-1') }),
    ).rejects.toMatchObject({ type: 'InvalidInput' });
    await expect(
      a2.switchToTarget({ migrationId: 'm-1', instanceId: 'i-9', sourceHostId: 'h-1' }),
    ).rejects.toMatchObject({ type: 'NotFound' });
    await expect(a2.exportVolume({ volumeId: 'i-1-v0', path: 'relative.img' })).rejects.toMatchObject({
      type: 'InvalidInput',
      message: expect.stringMatching(/^path "relative\.img" is relative/),
    });
    const out = path.join(dataDir, 'out.img');
    await expect(a2.exportVolume({ volumeId: 'i-1-v0', path: out })).rejects.toMatchObject({
      type: 'NotFound',
      message: 'volume i-1-v0 does not exist on host h-2',
    });
    expect(fs.existsSync(out)).toBe(false);
    expect(store('h-2').listVolumes()).toEqual([]);
  });

  test('a new agent over the same data dir resumes a running instance', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1')]);
    await sleep(100);
    await runtime.close();
    const before = seqs('i-1').length;
    expect(before).toBeGreaterThan(0);
    await sleep(50);
    expect(seqs('i-1').length).toBe(before);

    runtime = new FleetRuntime({ dataDir, workloadTickMs: 5 });
    await runtime.host('h-1');
    await sleep(100);
    const after = seqs('i-1');
    expect(after.length).toBeGreaterThan(before);
    expectConsecutive(after);
  });

  test('full migration with the workload writing: h-2 holds every logged write, h-1 is emptied', async () => {
    const launch = launchOf('i-1', 2 * MiB, [2 * MiB, 1 * MiB]);
    const a1 = await acts('h-1');
    const a2 = await acts('h-2');
    await a1.launchInstances([launch]);
    await a2.prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-1', launch });
    await a2.prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-1', launch });
    expect(record('h-2', 'i-1')).toMatchObject({
      state: 'prepared',
      migration: { role: 'target', migrationId: 'm-1' },
    });
    await sleep(100);

    const sw = await a2.switchToTarget({ migrationId: 'm-1', instanceId: 'i-1', sourceHostId: 'h-1' });
    const again = await a2.switchToTarget({ migrationId: 'm-1', instanceId: 'i-1', sourceHostId: 'h-1' });
    expect(again).toEqual(sw);
    expect(sw.lastSourceSeq).toBeGreaterThan(0);
    expect(sw.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(record('h-1', 'i-1')).toMatchObject({
      state: 'paused',
      migration: { role: 'source', migrationId: 'm-1' },
    });
    expect(record('h-2', 'i-1')?.switch).toEqual(sw);

    await syncUntilDone(a2, launch);
    await syncUntilDone(a2, launch); // retried slices after done change nothing
    for (const volume of launch.volumes) {
      const report = await a2.verifyVolume({
        migrationId: 'm-1',
        volumeId: volume.volumeId,
        sourceHostId: 'h-1',
      });
      expect(report.mismatchedBlocks).toEqual([]);
      expect(report.blocksVerified + report.blocksWrittenOnTarget).toBe(volume.sizeBytes / BLOCK);
    }
    await a2.finalizeTarget({ migrationId: 'm-1', instanceId: 'i-1' });
    await a2.finalizeTarget({ migrationId: 'm-1', instanceId: 'i-1' });
    expect(record('h-2', 'i-1')?.migration).toBeUndefined();
    await a1.releaseSource({ migrationId: 'm-1', instanceId: 'i-1' });
    await a1.releaseSource({ migrationId: 'm-1', instanceId: 'i-1' });
    await sleep(100);
    await runtime.close();

    const log = readWorkloadLog(dataDir, 'i-1');
    expectConsecutive(log.map((e) => e.seq));
    expect(log.filter((e) => e.seq <= sw.lastSourceSeq).every((e) => e.host === 'h-1')).toBe(true);
    expect(log.filter((e) => e.seq > sw.lastSourceSeq).every((e) => e.host === 'h-2')).toBe(true);
    expect(log.filter((e) => e.host === 'h-2').length).toBeGreaterThan(5);
    for (const volume of launch.volumes) {
      const image = fs.readFileSync(store('h-2').imagePath(volume.volumeId));
      expect(image.equals(expectedImage('i-1', volume.volumeId, volume.sizeBytes))).toBe(true);
      expect(fs.existsSync(store('h-1').imagePath(volume.volumeId))).toBe(false);
    }
    expect(store('h-1').listVolumes()).toEqual([]);
    expect(store('h-2').listVolumes()).toEqual(['i-1-v0', 'i-1-v1']);
    expect(record('h-1', 'i-1')).toBeUndefined();
  });

  test('after a switch, restarted agents keep the source paused and resume the target', async () => {
    const launch = launchOf('i-1');
    const { sw } = await prepareAndSwitch(launch);
    await sleep(50);
    await runtime.close();
    const before = seqs('i-1').length;

    runtime = new FleetRuntime({ dataDir, workloadTickMs: 5 });
    await runtime.host('h-1');
    const a2 = await acts('h-2');
    await sleep(100);
    const log = readWorkloadLog(dataDir, 'i-1');
    expect(log.length).toBeGreaterThan(before);
    expectConsecutive(log.map((e) => e.seq));
    expect(log.filter((e) => e.seq > sw.lastSourceSeq).every((e) => e.host === 'h-2')).toBe(true);
    expect(await a2.switchToTarget({ migrationId: 'm-1', instanceId: 'i-1', sourceHostId: 'h-1' })).toEqual(
      sw,
    );

    await syncUntilDone(a2, launch);
    await a2.finalizeTarget({ migrationId: 'm-1', instanceId: 'i-1' });
    await runtime.close();
    for (const volume of launch.volumes) {
      const image = fs.readFileSync(store('h-2').imagePath(volume.volumeId));
      expect(image.equals(expectedImage('i-1', volume.volumeId, volume.sizeBytes))).toBe(true);
    }
  });

  test('releaseSource refuses while the instance runs unpaused on the source', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1')]);
    await expect(a1.releaseSource({ migrationId: 'm-1', instanceId: 'i-1' })).rejects.toMatchObject({
      type: 'InvalidState',
      nonRetryable: true,
    });
    expect(store('h-1').listVolumes()).toEqual(['i-1-v0', 'i-1-v1']);
    expect(record('h-1', 'i-1')?.state).toBe('running');
  });

  test('discardTarget rolls back a prepared target and is idempotent; refused after the switch', async () => {
    const launch = launchOf('i-1');
    const a1 = await acts('h-1');
    const a2 = await acts('h-2');
    await a1.launchInstances([launch]);
    await a2.prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-1', launch });
    expect(store('h-2').listVolumes()).toEqual(['i-1-v0', 'i-1-v1']);
    await a2.discardTarget({ migrationId: 'm-1', instanceId: 'i-1' });
    await a2.discardTarget({ migrationId: 'm-1', instanceId: 'i-1' });
    expect(store('h-2').listVolumes()).toEqual([]);
    expect(fs.readdirSync(path.join(dataDir, 'hosts', 'h-2', 'volumes'))).toEqual([]);
    expect(record('h-2', 'i-1')).toBeUndefined();
    // The source never noticed.
    const before = seqs('i-1').length;
    await sleep(80);
    const log = readWorkloadLog(dataDir, 'i-1');
    expect(log.length).toBeGreaterThan(before);
    expect(log.every((e) => e.host === 'h-1')).toBe(true);
    expect(record('h-1', 'i-1')).toMatchObject({ state: 'running' });

    await a2.prepareTarget({ migrationId: 'm-2', sourceHostId: 'h-1', launch });
    await a2.switchToTarget({ migrationId: 'm-2', instanceId: 'i-1', sourceHostId: 'h-1' });
    await expect(a2.discardTarget({ migrationId: 'm-2', instanceId: 'i-1' })).rejects.toMatchObject({
      type: 'InvalidState',
    });
    expect(store('h-2').listVolumes()).toEqual(['i-1-v0', 'i-1-v1']);
  });

  test('a discard interrupted by a crash is finished by its retry', async () => {
    const launch = launchOf('i-1', 0);
    await (await acts('h-1')).launchInstances([launch]);
    await (await acts('h-2')).prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-1', launch });
    await runtime.close();
    // What a kill after the first deletion leaves: the record says stopped, one volume is gone.
    const file = path.join(dataDir, 'hosts', 'h-2', 'instances', 'i-1.json');
    fs.writeFileSync(file, JSON.stringify({ ...record('h-2', 'i-1'), state: 'stopped' }));
    await store('h-2').deleteVolume('i-1-v0');

    runtime = new FleetRuntime({ dataDir, workloadTickMs: 5 });
    await (await acts('h-2')).discardTarget({ migrationId: 'm-1', instanceId: 'i-1' });
    expect(store('h-2').listVolumes()).toEqual([]);
    expect(record('h-2', 'i-1')).toBeUndefined();
    expect(store('h-1').listVolumes()).toEqual(['i-1-v0', 'i-1-v1']);
  });

  test('resumeInstance runs a paused source again, and refuses once the target switched', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1')]);
    await sleep(50);
    const h1 = runtime.localAgent('h-1')!;
    const paused = await h1.pauseForSwitch('i-1', 'm-9', 'h-2');
    expect(record('h-1', 'i-1')?.state).toBe('paused');
    await a1.resumeInstance({ instanceId: 'i-1' });
    await a1.resumeInstance({ instanceId: 'i-1' });
    await sleep(50);
    expect(record('h-1', 'i-1')?.state).toBe('running');
    expect(record('h-1', 'i-1')?.migration).toBeUndefined();
    const log = seqs('i-1');
    expectConsecutive(log);
    expect(log.length).toBeGreaterThan(paused.lastSeq);

    const a2 = await acts('h-2');
    const launch = launchOf('i-1');
    await a2.prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-1', launch });
    await a2.switchToTarget({ migrationId: 'm-1', instanceId: 'i-1', sourceHostId: 'h-1' });
    await expect(a1.resumeInstance({ instanceId: 'i-1' })).rejects.toMatchObject({ type: 'InvalidState' });
    expect(record('h-1', 'i-1')?.state).toBe('paused');
  });

  test('switchToTarget fails retryable, naming the host, when the source agent is not in this process', async () => {
    const other = new FleetRuntime({ dataDir });
    const launch = launchOf('i-1');
    await (await acts('h-1', other)).launchInstances([launch]);
    await other.close();

    const a2 = await acts('h-2');
    await a2.prepareTarget({ migrationId: 'm-1', sourceHostId: 'h-1', launch });
    const failure = a2.switchToTarget({ migrationId: 'm-1', instanceId: 'i-1', sourceHostId: 'h-1' });
    await expect(failure).rejects.toMatchObject({ type: 'HostUnreachable', nonRetryable: false });
    await expect(failure).rejects.toThrow(/host agent h-1/);
    expect(record('h-2', 'i-1')?.state).toBe('prepared');
    expect(record('h-1', 'i-1')?.state).toBe('running');
  });

  test('export of a replica mid-sync equals the source', async () => {
    const launch = launchOf('i-1', 0, [2 * MiB]);
    const { a1, a2 } = await prepareAndSwitch(launch);
    const slice = await a2.syncVolumeSlice({
      migrationId: 'm-1',
      volumeId: 'i-1-v0',
      sourceHostId: 'h-1',
      bandwidthBytesPerSec: 256 * KiB,
      maxSliceMs: 50,
    });
    expect(slice.done).toBe(false);
    const fromTarget = await a2.exportVolume({ volumeId: 'i-1-v0', path: path.join(dataDir, 'target.img') });
    const fromSource = await a1.exportVolume({ volumeId: 'i-1-v0', path: path.join(dataDir, 'source.img') });
    expect(fromTarget).toMatchObject({ hostId: 'h-2', sizeBytes: 2 * MiB });
    expect(fromTarget.sha256).toBe(fromSource.sha256);
    expect(fs.readFileSync(fromTarget.path).equals(fs.readFileSync(fromSource.path))).toBe(true);
    expect(fs.readFileSync(fromSource.path).equals(patternBytes(volumePatternSeed('i-1-v0'), 2 * MiB))).toBe(
      true,
    );
  });

  test('syncVolumeSlice resumes from the heartbeated cursor and heartbeats its own', async () => {
    const launch = launchOf('i-1', 0, [8 * MiB]); // 128 blocks, 64 per chunk
    const { a2 } = await prepareAndSwitch(launch);
    const env = new MockActivityEnvironment({ heartbeatDetails: { cursor: 100 }, attempt: 2 });
    const beats: unknown[] = [];
    env.on('heartbeat', (d: unknown) => beats.push(d));
    const result = await env.run(a2.syncVolumeSlice, {
      migrationId: 'm-1',
      volumeId: 'i-1-v0',
      sourceHostId: 'h-1',
      bandwidthBytesPerSec: 0,
      maxSliceMs: 60_000,
    });
    expect(result).toMatchObject({ done: true, blocksDone: 128, blocksTotal: 128, bytesCopied: 8 * MiB });
    // Started at 100: 100-127, then wrapped to 0-63 and 64-99.
    expect(beats).toEqual([{ cursor: 0 }, { cursor: 64 }, { cursor: 100 }]);
  });

  test('setSyncBandwidth is kept in the instance state; a retried slice uses it, a first attempt sets its own', async () => {
    const launch = launchOf('i-1', 0, [2 * MiB]);
    const { a2 } = await prepareAndSwitch(launch);
    await a2.setSyncBandwidth({ migrationId: 'm-1', bytesPerSec: 96 * KiB });
    expect(record('h-2', 'i-1')?.migration?.bandwidthBytesPerSec).toBe(96 * KiB);
    const agent = runtime.localAgent('h-2')!;
    const input = {
      migrationId: 'm-1',
      volumeId: 'i-1-v0',
      sourceHostId: 'h-1',
      bandwidthBytesPerSec: 0,
      maxSliceMs: 20,
    };
    await new MockActivityEnvironment({ attempt: 3 }).run(a2.syncVolumeSlice, input);
    expect(agent.syncBandwidth('m-1')).toBe(96 * KiB);
    await new MockActivityEnvironment({ attempt: 1 }).run(a2.syncVolumeSlice, {
      ...input,
      bandwidthBytesPerSec: 128 * KiB,
    });
    expect(agent.syncBandwidth('m-1')).toBe(128 * KiB);
    expect(record('h-2', 'i-1')?.migration?.bandwidthBytesPerSec).toBe(128 * KiB);
    await expect(a2.setSyncBandwidth({ migrationId: 'm-1', bytesPerSec: -1 })).rejects.toMatchObject({
      type: 'InvalidInput',
    });
    await expect(a2.setSyncBandwidth({ migrationId: 'm-1', bytesPerSec: 0.5 })).rejects.toMatchObject({
      type: 'InvalidInput',
      message: expect.stringMatching(/^bandwidth 0\.5 is not valid/),
    });
    expect(agent.syncBandwidth('m-1')).toBe(128 * KiB);
  });

  test('a cancelled slice stops its copy and reports the cancellation', async () => {
    const launch = launchOf('i-1', 0, [4 * MiB]);
    const { a2 } = await prepareAndSwitch(launch);
    const env = new MockActivityEnvironment();
    const running = env.run(a2.syncVolumeSlice, {
      migrationId: 'm-1',
      volumeId: 'i-1-v0',
      sourceHostId: 'h-1',
      bandwidthBytesPerSec: 128 * KiB,
      maxSliceMs: 60_000,
    });
    await sleep(200);
    env.cancel();
    await expect(running).rejects.toBeInstanceOf(CancelledFailure);
    const replica = await runtime.localAgent('h-2')!.replica('i-1-v0');
    expect(replica.progress().blocksMissing).toBeGreaterThan(0);
  });

  test('importVolume attaches a user-data volume the workload leaves alone; retry returns the same hash', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1')]);
    const src = path.join(dataDir, 'disk.img');
    const content = crypto.randomBytes(256 * KiB);
    fs.writeFileSync(src, content);
    const input = {
      volumeId: 'i-1-data',
      instanceId: 'i-1',
      path: src,
      sizeBytes: 256 * KiB,
      blockSize: BLOCK,
      userData: true,
    };
    const first = await a1.importVolume(input);
    const second = await a1.importVolume(input);
    expect(second).toEqual(first);
    expect(first).toMatchObject({ hostId: 'h-1', sizeBytes: 256 * KiB });
    expect(first.sha256).toBe(crypto.createHash('sha256').update(content).digest('hex'));
    expect(record('h-1', 'i-1')?.volumes.map((v) => v.volumeId)).toEqual(['i-1-v0', 'i-1-v1', 'i-1-data']);
    await sleep(100);
    expect(readWorkloadLog(dataDir, 'i-1').some((e) => e.volume === 'i-1-data')).toBe(false);
    const out = await a1.exportVolume({ volumeId: 'i-1-data', path: path.join(dataDir, 'out.img') });
    expect(fs.readFileSync(out.path).equals(content)).toBe(true);
    await expect(a1.importVolume({ ...input, instanceId: 'i-7' })).rejects.toMatchObject({
      type: 'NotFound',
    });
  });
});
