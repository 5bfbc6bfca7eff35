import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import fs from 'node:fs';
import path from 'node:path';
import {
  CONTROL_TASK_QUEUE,
  ErrorType,
  MiB,
  type FleetLayout,
  type LiveMigrationResult,
  type MigrationProgress,
} from '../../src/contracts';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { BlockState, SYNC_MAP_HEADER_BYTES } from '../../src/fleet/sync-map';
import { overlayLoggedWrites, readWorkloadLog } from '../../src/fleet/workload-log';
import { startCluster, type TestCluster } from '../helpers/cluster';
import { currentDetails, useTestBed } from '../helpers/workflow-harness';

// Issue 4, part 4: the source host is lost for good after the switch, while the sync still has
// blocks to copy. Its agent stops (nobody serves its queue or runs anything there any more) and its
// disk goes: every host's data lives under one data dir, so a target could otherwise go on reading
// the dead host's images straight from the shared directory, which no real link would allow. The
// migration must end with a clear failure naming the data at risk, never with a silently wrong image.
describe('lost source: the source host dies for good after the switch', () => {
  let cluster: TestCluster;
  let layout: FleetLayout;

  beforeAll(async () => {
    cluster = await startCluster();
    layout = await cluster.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'lost-fleet',
      args: [
        {
          hosts: 3,
          instances: 1,
          volumeSizeBytes: 32 * MiB,
          workload: { writeBytesPerSec: MiB, writeSize: 4096 },
        },
      ],
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('fails naming the volume, the blocks never copied and the snapshot that holds them', async () => {
    // The instance's reads of blocks it lacks fail from now on, and its agent says so: expected here.
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    const instance = layout.instances[0];
    const volume = layout.volumes.find((v) => v.instanceId === instance.instanceId)!;
    const source = instance.hostId;
    const target = layout.hosts.find((h) => h.hostId !== source)!.hostId;
    const blocks = volume.sizeBytes / volume.blockSize;

    // 1 MiB/s: the 32 MiB copy would take half a minute, so the source is lost half way.
    const handle = await cluster.client.workflow.start('liveMigration', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'lost-migrate',
      args: [{ instanceId: instance.instanceId, targetHostId: target, bandwidthBytesPerSec: MiB }],
    });
    let progress: MigrationProgress | undefined;
    for (let i = 0; i < 1200; i++) {
      progress = await handle.query<MigrationProgress>('progress');
      if (progress.phase === 'syncing' && progress.blocksDone >= 32) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(progress?.phase).toBe('syncing');

    // The host dies: its agent and worker stop for good, and its disk is gone (kept aside only so
    // the temp dir holds everything for a post-mortem).
    await cluster.workers.stopHost(source);
    fs.renameSync(path.join(cluster.dataDir, 'hosts', source), path.join(cluster.dataDir, `lost-${source}`));

    const failure = await handle.result().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(failure).toBeInstanceOf(WorkflowFailedError);
    const cause = (failure as WorkflowFailedError).cause;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    const { type, message } = cause as ApplicationFailure;
    expect(type).toBe(ErrorType.DataIntegrity);
    expect(message).toContain(`source host ${source} is lost`);
    expect(message).toContain(`volume ${volume.volumeId} of instance ${instance.instanceId} on ${target}`);
    expect(message).toMatch(/data at risk in blocks \d+/);
    const lacking = /lacks (\d+) of (\d+) blocks/.exec(message);
    expect(lacking).not.toBeNull();
    expect(Number(lacking![2])).toBe(blocks);
    const kept = new RegExp(
      `pre-migration snapshot is kept: (\\S+) of ${volume.volumeId} \\(as of workload seq (\\d+)\\)`,
    ).exec(message);
    expect(kept).not.toBeNull();

    const described = await handle.describe();
    expect((described.searchAttributes as Record<string, unknown[]>).Phase).toEqual(['failed']);

    // The snapshot it names exists and is the instance's: the operator's way back to those blocks.
    const info = await cluster.workers.snapshots.info(instance.account, kept![1]);
    expect(info.volumeId).toBe(volume.volumeId);

    // Nothing silently wrong: every block the target says it holds is right, and the blocks it
    // lacks are exactly as many as the failure names.
    await cluster.workers.fleet.localAgent(target)!.workload(instance.instanceId)!.pause();
    const volumeDir = path.join(cluster.dataDir, 'hosts', target, 'volumes');
    const states = fs
      .readFileSync(path.join(volumeDir, `${volume.volumeId}.map`))
      .subarray(SYNC_MAP_HEADER_BYTES);
    const missing = [...states.keys()].filter(
      (i) => states[i] === BlockState.Missing || states[i] === BlockState.Copying,
    );
    expect(missing.length).toBe(Number(lacking![1]));
    expect(missing.length).toBeGreaterThan(0);
    expect(missing.length).toBeLessThan(blocks);

    const expected = overlayLoggedWrites(
      patternBytes(volumePatternSeed(volume.volumeId), volume.sizeBytes),
      instance.instanceId,
      volume.volumeId,
      readWorkloadLog(cluster.dataDir, instance.instanceId),
    );
    const actual = fs.readFileSync(path.join(volumeDir, `${volume.volumeId}.img`));
    const wrong: number[] = [];
    for (let i = 0; i < blocks; i++) {
      if (missing.includes(i)) continue;
      const at = i * volume.blockSize;
      if (!actual.subarray(at, at + volume.blockSize).equals(expected.subarray(at, at + volume.blockSize))) {
        wrong.push(i);
      }
    }
    expect(wrong).toEqual([]);
    expect(
      warn.mock.calls.some(([line]) => String(line).includes(`source host ${source} cannot be read`)),
    ).toBe(true);
    warn.mockRestore();
  }, 180_000);
});

// The other way to lose a source after the switch: its agent dies for good once the sync is done
// (its disk still readable, so the copy and the verify completed). Nobody will ever answer its
// release: after a bounded wait the migration commits on the target, whose copy is complete and
// verified, and says what it left on the source. Ten minutes of waiting, so time-skipping and mocks.
describe('lost source after the sync (time-skipping, mocked activities)', () => {
  const bed = useTestBed();

  it('commits on the target and names the stale copy left on a source that never answers', async () => {
    bed.mocks.overrides.releaseSource = async () => {
      throw ApplicationFailure.retryable('host agent h-1 does not answer', 'HostUnreachable');
    };
    const handle = await bed.start('liveMigration', { instanceId: 'i-3', targetHostId: 'h-2' });
    const result: LiveMigrationResult = await handle.result();

    expect(result.sourceReleased).toBe(false);
    expect(bed.mocks.callsTo('releaseSource').length).toBeGreaterThan(1);
    expect(bed.mocks.callsTo('commitMigration')).toHaveLength(1);
    const names = bed.mocks.names();
    expect(names.indexOf('finalizeTarget')).toBeLessThan(names.indexOf('commitMigration'));
    const details = await currentDetails(bed.client, handle.workflowId);
    expect(details).toContain('**completed**');
    expect(details).toContain('source h-1 never answered its release');
    expect(details).toContain('v-i-3-a, v-i-3-b');
  });

  it('still releases a source that answers, and says nothing about a stale copy', async () => {
    const handle = await bed.start('liveMigration', { instanceId: 'i-3', targetHostId: 'h-2' });
    const result: LiveMigrationResult = await handle.result();
    expect(result.sourceReleased).toBeUndefined();
    expect(bed.mocks.callsTo('releaseSource')).toHaveLength(1);
  });
});
