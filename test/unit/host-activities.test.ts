import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CancelledFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createHostActivities, type HostActivities } from '../../src/activities/host-activities';
import type {
  InstanceLaunch,
  RestoreVolumeInput,
  SnapshotVolumeInput,
  SwitchResult,
  VolumeSnapshot,
} from '../../src/contracts';
import { FleetRuntime } from '../../src/fleet/fleet-runtime';
import type { InstanceRecord } from '../../src/fleet/host-agent';
import { HostStore } from '../../src/fleet/host-store';
import { FileObjectStore, objectStoreRoot } from '../../src/fleet/object-store';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { SnapshotStore } from '../../src/fleet/snapshot-store';
import { capturesDir } from '../../src/fleet/volume-capture';
import { lastLoggedSeq, overlayLoggedWrites, readWorkloadLog } from '../../src/fleet/workload-log';

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
  let snapshots: SnapshotStore;

  beforeEach(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-host-acts-'));
    runtime = new FleetRuntime({ dataDir, workloadTickMs: 5 });
    snapshots = new SnapshotStore(new FileObjectStore(objectStoreRoot(dataDir)));
  });

  afterEach(async () => {
    await runtime.close();
    await snapshots.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  async function acts(hostId: string, rt = runtime): Promise<HostActivities> {
    return createHostActivities(await rt.host(hostId), snapshots);
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

  test('a restarting agent resumes its instances but not one the fleet now places on another host', async () => {
    await (await acts('h-1')).launchInstances([launchOf('i-1'), launchOf('i-2')]);
    await sleep(50);
    await runtime.close();
    const written = { 'i-1': seqs('i-1').length, 'i-2': seqs('i-2').length };
    expect(written['i-1']).toBeGreaterThan(0);
    expect(record('h-1', 'i-1')?.state).toBe('running');

    // i-1 was restored on h-3 while h-1 was away; i-2 is still placed here.
    const placedOn: Record<string, string> = { 'i-1': 'h-3', 'i-2': 'h-1' };
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      runtime = new FleetRuntime({
        dataDir,
        workloadTickMs: 5,
        placedElsewhere: (instanceId, hostId) =>
          placedOn[instanceId] === hostId ? undefined : placedOn[instanceId],
      });
      const h1 = await runtime.host('h-1');
      expect(h1.workload('i-1')).toBeUndefined();
      expect(h1.workload('i-2')).toBeDefined();
      expect(warn).toHaveBeenCalledTimes(1);
      expect(warn.mock.calls[0][0]).toMatch(
        /host h-1 does not resume instance i-1: the inventory places it on h-3/,
      );
    } finally {
      warn.mockRestore();
    }
    await sleep(50);
    expect(seqs('i-1')).toHaveLength(written['i-1']);
    expect(seqs('i-2').length).toBeGreaterThan(written['i-2']);
    expect(record('h-1', 'i-1')).toMatchObject({ state: 'stopped', fenced: { placedOn: 'h-3' } });
    expect(record('h-1', 'i-2')?.state).toBe('running');
    // The fenced copy stays for inspection, and stays stopped on the next restart too.
    expect(store('h-1').listVolumes()).toEqual(['i-1-v0', 'i-1-v1', 'i-2-v0', 'i-2-v1']);
    await runtime.close();
    runtime = new FleetRuntime({ dataDir, workloadTickMs: 5 });
    expect((await runtime.host('h-1')).workload('i-1')).toBeUndefined();
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
    // 128 blocks of 64 KiB; copied inside the kernel, in chunks of 32 MiB (512 blocks).
    const launch = launchOf('i-1', 0, [8 * MiB]);
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
    // Started at 100: 100-127, then wrapped to 0-99.
    expect(beats).toEqual([{ cursor: 0 }, { cursor: 100 }]);
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
  // ---- snapshots and restores ------------------------------------------------------------------

  function snapshotInput(volumeId: string, snapshotId = 'snap-1', account = 'acct-1'): SnapshotVolumeInput {
    return {
      snapshotId,
      account,
      instanceId: volumeId.replace(/-v\d+$/, ''),
      volumeId,
      event: 'migration:m-1',
      createdAt: '2026-03-01T12:00:00.000Z',
    };
  }

  function restoreInput(snap: VolumeSnapshot, restoreId = 'r-1'): RestoreVolumeInput {
    return {
      restoreId,
      account: snap.account,
      snapshotId: snap.snapshotId,
      instanceId: snap.instanceId,
      volumeId: snap.volumeId,
    };
  }

  /** The volume as of `atSeq`: its pattern overlaid with the logged writes up to that seq. */
  function imageAt(instanceId: string, volumeId: string, sizeBytes: number, atSeq: number): Buffer {
    const log = readWorkloadLog(dataDir, instanceId).filter((e) => e.seq <= atSeq);
    return overlayLoggedWrites(
      patternBytes(volumePatternSeed(volumeId), sizeBytes),
      instanceId,
      volumeId,
      log,
    );
  }

  function volumeFiles(hostId: string): string[] {
    const dir = path.join(dataDir, 'hosts', hostId, 'volumes');
    return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
  }

  function restoresLeft(hostId: string): string[] {
    const dir = path.join(dataDir, 'hosts', hostId, 'restores');
    return fs.existsSync(dir) ? fs.readdirSync(dir) : [];
  }

  function packFiles(account: string): string[] {
    const dir = path.join(objectStoreRoot(dataDir), account, 'packs');
    if (!fs.existsSync(dir)) return [];
    return fs
      .readdirSync(dir)
      .flatMap((sub) => fs.readdirSync(path.join(dir, sub)).map((f) => path.join(dir, sub, f)))
      .filter((f) => f.endsWith('.pack'));
  }

  test('snapshotVolume of a writing instance restores on another host equal to the volume at its instant', async () => {
    const launch = launchOf('i-1', 8 * MiB, [8 * MiB]);
    const a1 = await acts('h-1');
    const a2 = await acts('h-2');
    await a1.launchInstances([launch]);
    await sleep(100);

    const env = new MockActivityEnvironment();
    const beats: unknown[] = [];
    env.on('heartbeat', (d: unknown) => beats.push(d));
    const snap = (await env.run(a1.snapshotVolume, snapshotInput('i-1-v0'))) as VolumeSnapshot;
    expect(snap).toMatchObject({
      snapshotId: 'snap-1',
      account: 'acct-1',
      instanceId: 'i-1',
      volumeId: 'i-1-v0',
      sizeBytes: 8 * MiB,
      chunkCount: (8 * MiB) / BLOCK,
      sourceEvent: 'migration:m-1',
      createdAt: '2026-03-01T12:00:00.000Z',
      bytesTotal: 8 * MiB,
    });
    expect(snap.atSeq).toBeGreaterThan(0);
    expect(snap.pausedMs).toBeGreaterThanOrEqual(0);
    expect(snap.bytesUploaded).toBeGreaterThan(0);
    expect(beats).toContainEqual(expect.objectContaining({ nextChunk: snap.chunkCount }));
    // The capture was closed: another one can be opened on the volume.
    const h1 = runtime.localAgent('h-1')!;
    await h1.openCapture('i-1', 'i-1-v0', 'c-check');
    await h1.closeCapture('i-1-v0', 'c-check');
    const spills = capturesDir(store('h-1').root);
    expect(fs.existsSync(spills) ? fs.readdirSync(spills) : []).toEqual([]);

    const restored = await a2.restoreVolume(restoreInput(snap));
    expect(restored).toEqual({ volumeId: 'i-1-v0', bytesRestored: 8 * MiB });
    await sleep(50);
    await h1.workload('i-1')!.pause();
    const image = fs.readFileSync(store('h-2').imagePath('i-1-v0'));
    expect(image.equals(imageAt('i-1', 'i-1-v0', 8 * MiB, snap.atSeq))).toBe(true);
    // The workload wrote on after the instant, and none of that is in the snapshot.
    const later = readWorkloadLog(dataDir, 'i-1').filter((e) => e.seq > snap.atSeq);
    expect(later.length).toBeGreaterThan(0);
    expect(image.equals(fs.readFileSync(store('h-1').imagePath('i-1-v0')))).toBe(false);
    expect(store('h-2').readSidecar('i-1-v0')).toMatchObject({ instanceId: 'i-1', sizeBytes: 8 * MiB });
    expect(restoresLeft('h-2')).toEqual([]);
  });

  test('snapshotVolume retried after its commit returns the same snapshot; before it, takes a new instant', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1', 4 * MiB, [2 * MiB])]);
    await sleep(50);
    // What an attempt killed before its commit leaves: a journal naming chunks of another instant.
    const meta = { ...snapshotInput('i-1-v0'), sizeBytes: 2 * MiB, blockSize: BLOCK, chunkSize: BLOCK };
    const killed = await snapshots.openUpload({ ...meta, sourceEvent: meta.event });
    await killed.putBlocks(0, Buffer.alloc(2 * MiB, 0xee));
    expect(killed.nextChunk).toBe(32);

    const first = await a1.snapshotVolume(snapshotInput('i-1-v0'));
    await sleep(50);
    const again = await new MockActivityEnvironment({ attempt: 2 }).run(
      a1.snapshotVolume,
      snapshotInput('i-1-v0'),
    );
    expect(again).toEqual(first);
    expect(await snapshots.list({ account: 'acct-1' })).toHaveLength(1);

    const a2 = await acts('h-2');
    await a2.restoreVolume(restoreInput(first));
    await runtime.localAgent('h-1')!.workload('i-1')!.pause();
    const image = fs.readFileSync(store('h-2').imagePath('i-1-v0'));
    expect(image.equals(imageAt('i-1', 'i-1-v0', 2 * MiB, first.atSeq))).toBe(true);
  });

  test('restoreVolume resumes from its heartbeated cursor, and a retry after publishing changes nothing', async () => {
    const a1 = await acts('h-1');
    const a2 = await acts('h-2');
    await a1.launchInstances([launchOf('i-1', 2 * MiB, [24 * MiB])]);
    await sleep(50);
    const snap = await a1.snapshotVolume(snapshotInput('i-1-v0'));
    const agent2 = runtime.localAgent('h-2')!;

    // Interrupted after its first batch (8 MiB = 128 chunks).
    const interrupted = new MockActivityEnvironment();
    const beats: { snapshotId: string; cursor: number }[] = [];
    interrupted.on('heartbeat', (d: { snapshotId: string; cursor: number }) => {
      beats.push(d);
      interrupted.cancel();
    });
    await expect(interrupted.run(a2.restoreVolume, restoreInput(snap))).rejects.toBeInstanceOf(
      CancelledFailure,
    );
    expect(beats[0]).toEqual({ snapshotId: 'snap-1', cursor: 128 });
    expect(store('h-2').listVolumes()).toEqual([]);
    expect(fs.statSync(agent2.restoringPath('r-1', 'i-1-v0')).size).toBe(24 * MiB);

    const resumed = new MockActivityEnvironment({ heartbeatDetails: beats[beats.length - 1], attempt: 2 });
    const cursors: number[] = [];
    resumed.on('heartbeat', (d: { cursor: number }) => cursors.push(d.cursor));
    expect(await resumed.run(a2.restoreVolume, restoreInput(snap))).toEqual({
      volumeId: 'i-1-v0',
      bytesRestored: 24 * MiB,
    });
    expect([...new Set(cursors)]).toEqual([256, 384]);
    await runtime.localAgent('h-1')!.workload('i-1')!.pause();
    const imagePath = store('h-2').imagePath('i-1-v0');
    const expected = imageAt('i-1', 'i-1-v0', 24 * MiB, snap.atSeq);
    expect(fs.readFileSync(imagePath).equals(expected)).toBe(true);
    expect(fs.existsSync(agent2.restoringPath('r-1', 'i-1-v0'))).toBe(false);

    const mtime = fs.statSync(imagePath).mtimeMs;
    const retried = new MockActivityEnvironment({ attempt: 3 });
    const retryBeats: unknown[] = [];
    retried.on('heartbeat', (d: unknown) => retryBeats.push(d));
    expect(await retried.run(a2.restoreVolume, restoreInput(snap))).toEqual({
      volumeId: 'i-1-v0',
      bytesRestored: 24 * MiB,
    });
    expect(retryBeats).toEqual([]);
    expect(fs.statSync(imagePath).mtimeMs).toBe(mtime);
    expect(fs.readFileSync(imagePath).equals(expected)).toBe(true);
  });

  test('restoreVolume refuses a host that has the instance or the volume id already, changing nothing', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1', 0, [1 * MiB])]);
    const snap = await a1.snapshotVolume(snapshotInput('i-1-v0'));
    await expect(a1.restoreVolume(restoreInput(snap))).rejects.toMatchObject({
      type: 'InvalidState',
      nonRetryable: true,
      message: expect.stringMatching(/^instance i-1 is already on host h-1/),
    });
    expect(restoresLeft('h-1')).toEqual([]);

    await store('h-3').createVolume(
      { volumeId: 'i-1-v0', instanceId: 'i-7', sizeBytes: 1 * MiB, blockSize: BLOCK, userData: false },
      'zero',
    );
    const a3 = await acts('h-3');
    await expect(a3.restoreVolume(restoreInput(snap))).rejects.toMatchObject({
      type: 'InvalidState',
      message: expect.stringMatching(/^volume i-1-v0 already exists on host h-3 \(instance i-7/),
    });
    expect(fs.readFileSync(store('h-3').imagePath('i-1-v0')).equals(Buffer.alloc(MiB))).toBe(true);
    expect(restoresLeft('h-3')).toEqual([]);
    await expect(a3.restoreVolume({ ...restoreInput(snap), volumeId: 'i-1-v1' })).rejects.toMatchObject({
      type: 'InvalidInput',
      message: expect.stringMatching(/^snapshot snap-1 is of volume i-1-v0 of instance i-1/),
    });
  });

  test('a corrupt chunk on disk fails the restore with DataIntegrity and publishes no image', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1', 0, [2 * MiB])]);
    const snap = await a1.snapshotVolume(snapshotInput('i-1-v0'));
    const [pack, ...more] = packFiles('acct-1');
    expect(more).toEqual([]);
    const bytes = fs.readFileSync(pack);
    bytes[3 * BLOCK + 77] ^= 0x01;
    fs.writeFileSync(pack, bytes);

    const a2 = await acts('h-2');
    const failure = a2.restoreVolume(restoreInput(snap));
    await expect(failure).rejects.toMatchObject({ type: 'DataIntegrity', nonRetryable: true });
    await expect(failure).rejects.toThrow(/snapshot snap-1 chunk \d+ is corrupt/);
    expect(store('h-2').listVolumes()).toEqual([]);
    expect(volumeFiles('h-2')).toEqual([]);
    expect(fs.existsSync(runtime.localAgent('h-2')!.restoringPath('r-1', 'i-1-v0'))).toBe(false);
    await expect(
      a2.startRestored({
        restoreId: 'r-1',
        instanceId: 'i-1',
        account: 'acct-1',
        volumes: [
          { volumeId: 'i-1-v0', sizeBytes: 2 * MiB, blockSize: BLOCK, userData: false, snapshotId: 'snap-1' },
        ],
        workload: { writeBytesPerSec: 0, writeSize: 4 * KiB },
      }),
    ).rejects.toMatchObject({
      type: 'InvalidState',
      message: expect.stringMatching(/^volume i-1-v0 of instance i-1 has not been restored on host h-2/),
    });
    expect(record('h-2', 'i-1')).toBeUndefined();
  });

  test('another account is refused for snapshot and restore; bad input opens nothing', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1', 2 * MiB, [1 * MiB])]);
    const acct2 = path.join(objectStoreRoot(dataDir), 'acct-2');
    await expect(a1.snapshotVolume(snapshotInput('i-1-v0', 'snap-1', 'acct-2'))).rejects.toMatchObject({
      type: 'Forbidden',
      nonRetryable: true,
      message: 'instance i-1 does not belong to account acct-2: use the owning account',
    });
    expect(fs.existsSync(acct2)).toBe(false);
    await expect(a1.snapshotVolume(snapshotInput('i-9-v0'))).rejects.toMatchObject({ type: 'NotFound' });
    await expect(a1.snapshotVolume({ ...snapshotInput('i-1-v0'), volumeId: 'i-1-v7' })).rejects.toMatchObject(
      {
        type: 'NotFound',
      },
    );
    await expect(a1.snapshotVolume({ ...snapshotInput('i-1-v0'), event: 'no spaces' })).rejects.toMatchObject(
      {
        type: 'InvalidInput',
      },
    );
    await expect(
      a1.snapshotVolume({ ...snapshotInput('i-1-v0'), snapshotId: 'Snap_1' }),
    ).rejects.toMatchObject({
      type: 'InvalidInput',
    });
    expect(await snapshots.list({ account: 'acct-1' })).toEqual([]);
    expect(fs.existsSync(path.join(objectStoreRoot(dataDir), 'acct-1', 'uploads'))).toBe(false);

    const snap = await a1.snapshotVolume(snapshotInput('i-1-v0'));
    const a2 = await acts('h-2');
    await expect(a2.restoreVolume({ ...restoreInput(snap), account: 'acct-2' })).rejects.toMatchObject({
      type: 'Forbidden',
      message: expect.stringContaining('snapshot snap-1 does not belong to account acct-2'),
    });
    // A retried snapshot with the wrong account is refused too, even once the snapshot exists.
    await expect(a1.snapshotVolume(snapshotInput('i-1-v0', 'snap-1', 'acct-2'))).rejects.toMatchObject({
      type: 'Forbidden',
    });
    expect(volumeFiles('h-2')).toEqual([]);
    expect(restoresLeft('h-2')).toEqual([]);
    expect(fs.existsSync(acct2)).toBe(false);
  });

  test('startRestored runs the restored instance with its seq continuing the log, once', async () => {
    const launch = launchOf('i-1', 2 * MiB, [1 * MiB, 512 * KiB]);
    const a1 = await acts('h-1');
    const a2 = await acts('h-2');
    await a1.launchInstances([launch]);
    await sleep(80);
    const snaps: VolumeSnapshot[] = [];
    for (const [n, volume] of launch.volumes.entries()) {
      snaps.push(await a1.snapshotVolume(snapshotInput(volume.volumeId, `snap-${n}`)));
    }
    for (const snap of snaps) await a2.restoreVolume(restoreInput(snap));
    await sleep(30);
    await a1.dropInstance({ instanceId: 'i-1', reason: 'restored on h-2 by r-1' });
    const lastOnH1 = lastLoggedSeq(dataDir, 'i-1');

    const input = {
      restoreId: 'r-1',
      instanceId: 'i-1',
      account: 'acct-1',
      volumes: launch.volumes.map((v, n) => ({ ...v, snapshotId: snaps[n].snapshotId })),
      workload: launch.workload,
    };
    const started = await a2.startRestored(input);
    expect(started).toEqual({ resumedAtSeq: lastOnH1 + 1 });
    await sleep(100);
    expect(await a2.startRestored(input)).toEqual(started);
    expect(record('h-2', 'i-1')).toMatchObject({ state: 'running', restored: { restoreId: 'r-1' } });
    expect(restoresLeft('h-2')).toEqual([]);
    await runtime.close();

    const log = readWorkloadLog(dataDir, 'i-1');
    expectConsecutive(log.map((e) => e.seq));
    expect(log.filter((e) => e.seq < started.resumedAtSeq).every((e) => e.host === 'h-1')).toBe(true);
    const onH2 = log.filter((e) => e.seq >= started.resumedAtSeq);
    expect(onH2.length).toBeGreaterThan(5);
    expect(onH2.every((e) => e.host === 'h-2')).toBe(true);
    // Each volume: as of its snapshot, plus what the workload wrote on h-2 (h-1's later writes are lost).
    for (const [n, volume] of launch.volumes.entries()) {
      const kept = log.filter((e) => e.seq <= snaps[n].atSeq || e.seq >= started.resumedAtSeq);
      const base = patternBytes(volumePatternSeed(volume.volumeId), volume.sizeBytes);
      const expected = overlayLoggedWrites(base, 'i-1', volume.volumeId, kept);
      expect(fs.readFileSync(store('h-2').imagePath(volume.volumeId)).equals(expected)).toBe(true);
    }
  });

  test('dropInstance removes a running or paused instance and its volumes; dropping again is a no-op', async () => {
    const a1 = await acts('h-1');
    await a1.launchInstances([launchOf('i-1'), launchOf('i-2')]);
    await sleep(50);
    await a1.dropInstance({ instanceId: 'i-1', reason: 'restored on h-2' });
    const frozen = seqs('i-1').length;
    await sleep(50);
    expect(seqs('i-1').length).toBe(frozen);
    expect(record('h-1', 'i-1')).toBeUndefined();
    expect(store('h-1').listVolumes()).toEqual(['i-2-v0', 'i-2-v1']);
    await a1.dropInstance({ instanceId: 'i-1', reason: 'restored on h-2' });

    // The source of a migration, paused for its switch, is dropped the same way.
    await runtime.localAgent('h-1')!.pauseForSwitch('i-2', 'm-1', 'h-2');
    await a1.dropInstance({ instanceId: 'i-2', reason: 'restored on h-3' });
    expect(record('h-1', 'i-2')).toBeUndefined();
    expect(volumeFiles('h-1')).toEqual([]);
    await expect(a1.dropInstance({ instanceId: 'i-2', reason: '' })).rejects.toMatchObject({
      type: 'InvalidInput',
    });
    await expect(a1.dropInstance({ instanceId: '../i-2', reason: 'x' })).rejects.toMatchObject({
      type: 'InvalidInput',
    });
  });

  test('discardRestored removes what a restore wrote, idempotently, and nothing of another instance', async () => {
    const a1 = await acts('h-1');
    const a2 = await acts('h-2');
    await a1.launchInstances([launchOf('i-1', 0, [1 * MiB])]);
    await a2.launchInstances([launchOf('i-2', 0, [1 * MiB])]);
    const snap = await a1.snapshotVolume(snapshotInput('i-1-v0'));
    await a2.restoreVolume(restoreInput(snap));
    expect(store('h-2').listVolumes()).toEqual(['i-1-v0', 'i-2-v0']);
    const discard = { restoreId: 'r-1', instanceId: 'i-1', volumeIds: ['i-1-v0', 'i-2-v0'] };
    await a2.discardRestored(discard);
    await a2.discardRestored(discard);
    expect(store('h-2').listVolumes()).toEqual(['i-2-v0']);
    expect(volumeFiles('h-2')).toEqual(['i-2-v0.img', 'i-2-v0.json']);
    expect(restoresLeft('h-2')).toEqual([]);
    expect(record('h-2', 'i-2')?.state).toBe('running');
  });
});
