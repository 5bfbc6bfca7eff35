import { ApplicationFailure } from '@temporalio/common';
import { NativeConnection, type ActivityInterceptorsFactory } from '@temporalio/worker';
import fs from 'node:fs';
import path from 'node:path';
import {
  CONTROL_TASK_QUEUE,
  ErrorType,
  MiB,
  type FleetLayout,
  type InstanceRecord,
  type LiveMigrationResult,
  type PreMigrationSnapshotResult,
  type RestoreInstanceInput,
  type RestoreInstanceResult,
  type SnapshotDeleteResult,
  type SwitchInput,
  type VolumeRecord,
  type VolumeSnapshot,
} from '../../src/contracts';
import { checkFleet } from '../../src/fleet/fleet-check';
import { overlayLoggedWrites, readWorkloadLog } from '../../src/fleet/workload-log';
import { runningWorkflows } from '../../src/temporal/running-workflows';
import { startWorkers } from '../../src/worker';
import { startCluster, type TestCluster } from '../helpers/cluster';
import { expectApplicationFailure } from '../helpers/failures';
import {
  corruptStoredChunk,
  dataFingerprint,
  imagePath,
  pauseAllWorkloads,
  snapshotBytes,
  volumeAsOf,
  waitFor,
  workflowFailureOf,
} from '../helpers/snapshot-checks';

// Snapshots and restores against a real embedded Temporal server, real workers and host agents, real
// images and a real snapshot store; the bytes are checked against the workloads' own logs.
describe('pre-migration snapshots and restores (integration)', () => {
  const volumeSize = 16 * MiB;
  /** One account per instance, so each test's chunks (and a corrupted one) are its own. */
  const accounts = ['acct-pit', 'acct-deny', 'acct-rot', 'acct-incr', 'acct-lost', 'acct-fence'];
  let cluster: TestCluster;
  let layout: FleetLayout;
  let n = 0;
  /** The migration whose switch fails, with its source host dying as it does (test 4). */
  let doomed: { instanceId: string; targetHostId: string } | undefined;

  // On the doomed migration's target: the source host dies (its worker stops, its agent closes, so it
  // neither runs the instance nor answers its queue), then launching on the target fails.
  const killSourceThenFailSwitch =
    (hostId: string): ActivityInterceptorsFactory =>
    (ctx) => ({
      inbound: {
        async execute(input, next) {
          const switching = input.args[0] as SwitchInput;
          if (
            ctx.info.activityType === 'switchToTarget' &&
            doomed?.targetHostId === hostId &&
            doomed.instanceId === switching.instanceId
          ) {
            await cluster.workers.stopHost(switching.sourceHostId);
            throw ApplicationFailure.nonRetryable(`launch failed on target ${hostId}`, 'LaunchFailed');
          }
          return next(input);
        },
      },
    });

  beforeAll(async () => {
    cluster = await startCluster({
      hostActivityInterceptors: (hostId) => [killSourceThenFailSwitch(hostId)],
    });
    layout = await cluster.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-snap-fleet',
      args: [
        {
          hosts: 3,
          instances: accounts.length,
          accounts,
          volumeSizeBytes: volumeSize,
          workload: { writeBytesPerSec: 2 * MiB, writeSize: 4096 },
        },
      ],
    });
    // Only tests 1 and 4 need their instance writing: the others keep still (and the CPU free). A
    // paused workload's record still says running: a restarted agent would resume it.
    for (const account of ['acct-deny', 'acct-rot', 'acct-incr', 'acct-fence']) {
      const { instance } = byAccount(account);
      await cluster.workers.fleet.localAgent(instance.hostId)!.workload(instance.instanceId)!.pause();
    }
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  function byAccount(account: string): { instance: InstanceRecord; volume: VolumeRecord } {
    const instance = layout.instances.find((i) => i.account === account)!;
    const volume = layout.volumes.find((v) => v.instanceId === instance.instanceId)!;
    return { instance, volume };
  }

  const otherHosts = (...not: string[]) =>
    layout.hosts.map((h) => h.hostId).filter((hostId) => !not.includes(hostId));

  /** Snapshots the instance's one volume; also says when the snapshot workflow had finished. */
  async function snapshot(instanceId: string): Promise<VolumeSnapshot & { doneAtMs: number }> {
    const handle = await cluster.client.workflow.start('preMigrationSnapshot', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: `it-snap-${++n}`,
      args: [{ instanceId, event: 'manual' }],
    });
    const result: PreMigrationSnapshotResult = await handle.result();
    expect(result.snapshots).toHaveLength(1);
    const { closeTime } = await handle.describe();
    return { ...result.snapshots[0], doneAtMs: closeTime!.getTime() };
  }

  function restore(input: RestoreInstanceInput): Promise<RestoreInstanceResult> {
    return cluster.client.workflow.execute('restoreInstance', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: `it-restore-${++n}`,
      args: [input],
    });
  }

  function failureOf(run: Promise<unknown>): Promise<unknown> {
    return run.then(
      () => undefined,
      (err: unknown) => workflowFailureOf(err),
    );
  }

  /** Waits until the instance has written on `hostId`, then stops its workload there. */
  async function quiesceOn(hostId: string, instanceId: string): Promise<void> {
    await waitFor(`${instanceId} to write on ${hostId}`, () =>
      readWorkloadLog(cluster.dataDir, instanceId).some((e) => e.host === hostId),
    );
    await cluster.workers.fleet.localAgent(hostId)!.workload(instanceId)!.pause();
  }

  it('snapshots a writing instance at one instant and restores it on another host', async () => {
    const { instance, volume } = byAccount('acct-pit');
    const source = instance.hostId;
    const target = otherHosts(source)[0];

    const snap = await snapshot(instance.instanceId);
    expect(snap.bytesUploaded).toBe(volumeSize);
    // Point in time: the stored content is the volume exactly as of write atSeq, none later.
    const stored = await snapshotBytes(cluster.workers.snapshots, instance.account, snap.snapshotId);
    const before = readWorkloadLog(cluster.dataDir, instance.instanceId);
    expect(before.some((e) => e.seq === snap.atSeq && e.host === source)).toBe(true);
    // The workload wrote on while the snapshot was being taken, and none of that is in it.
    expect(before.some((e) => e.seq > snap.atSeq && e.t < snap.doneAtMs)).toBe(true);
    expect(stored.equals(volumeAsOf(volume, instance.instanceId, before, snap.atSeq))).toBe(true);

    const restored = await restore({
      account: instance.account,
      snapshotIds: [snap.snapshotId],
      targetHostId: target,
    });
    expect(restored).toMatchObject({
      instanceId: instance.instanceId,
      fromHostId: source,
      hostId: target,
      bytesRestored: volumeSize,
      previousReleased: true,
    });

    // The restored copy = the snapshot overlaid with what the instance wrote on its new host.
    await quiesceOn(target, instance.instanceId);
    const log = readWorkloadLog(cluster.dataDir, instance.instanceId);
    const onSource = log.filter((e) => e.host === source);
    const onTarget = log.filter((e) => e.host === target);
    // The workload kept writing through the snapshot: those later writes are not in it, and lost.
    expect(onSource.some((e) => e.seq > snap.atSeq)).toBe(true);
    expect(Math.min(...onTarget.map((e) => e.seq))).toBe(Math.max(...onSource.map((e) => e.seq)) + 1);
    const expected = overlayLoggedWrites(Buffer.from(stored), instance.instanceId, volume.volumeId, onTarget);
    expect(fs.readFileSync(imagePath(cluster.dataDir, target, volume.volumeId)).equals(expected)).toBe(true);

    // The previous copy is gone and the inventory follows the instance.
    expect(fs.existsSync(imagePath(cluster.dataDir, source, volume.volumeId))).toBe(false);
    const inventory = cluster.workers.inventory;
    expect(inventory.getInstance(instance.instanceId)!.hostId).toBe(target);
    expect(inventory.getVolume(volume.volumeId)!.hostId).toBe(target);
    expect(inventory.listReservations()).toEqual([]);
    expect(inventory.checkConsistency()).toEqual([]);
  });

  it('refuses to restore or delete a snapshot for another account, changing nothing', async () => {
    const { instance } = byAccount('acct-deny');
    const snap = await snapshot(instance.instanceId);
    const resume = await pauseAllWorkloads(cluster.workers);
    try {
      const fingerprint = dataFingerprint(cluster.dataDir, cluster.workers.inventory);
      // Another customer of the fleet, and an account nobody has.
      for (const wrong of ['acct-pit', 'acct-nobody']) {
        const says = new RegExp(`${snap.snapshotId}.*${wrong}`);
        const refusedRestore = await failureOf(
          restore({
            account: wrong,
            snapshotIds: [snap.snapshotId],
            targetHostId: otherHosts(instance.hostId)[0],
          }),
        );
        expectApplicationFailure(refusedRestore, ErrorType.Forbidden, says);
        const refusedDelete = await failureOf(
          cluster.client.workflow.execute('deleteSnapshot', {
            taskQueue: CONTROL_TASK_QUEUE,
            workflowId: `it-delete-${++n}`,
            args: [{ account: wrong, snapshotId: snap.snapshotId }],
          }),
        );
        expectApplicationFailure(refusedDelete, ErrorType.Forbidden, says);
      }

      expect(dataFingerprint(cluster.dataDir, cluster.workers.inventory)).toBe(fingerprint);
      expect(cluster.workers.inventory.listReservations()).toEqual([]);
    } finally {
      await resume();
    }
    // The owner still can: the refusal was about the account, not the snapshot.
    const deleted: SnapshotDeleteResult = await cluster.client.workflow.execute('deleteSnapshot', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: `it-delete-${++n}`,
      args: [{ account: instance.account, snapshotId: snap.snapshotId }],
    });
    expect(deleted.deleted).toBe(true);
  });

  it('detects a corrupted chunk on restore and publishes nothing', async () => {
    const { instance, volume } = byAccount('acct-rot');
    const target = otherHosts(instance.hostId)[0];
    const snap = await snapshot(instance.instanceId);
    const manifest = await cluster.workers.snapshots.get(instance.account, snap.snapshotId);
    const bad = manifest.chunkCount - 3;
    const repair = corruptStoredChunk(cluster.dataDir, instance.account, manifest.chunks[bad]);
    try {
      const inventoryBefore = JSON.stringify(cluster.workers.inventory.snapshot());
      const failure = await failureOf(
        restore({ account: instance.account, snapshotIds: [snap.snapshotId], targetHostId: target }),
      );
      expectApplicationFailure(
        failure,
        ErrorType.DataIntegrity,
        new RegExp(`snapshot ${snap.snapshotId} chunk ${bad}\\b.*corrupt`),
      );

      // Nothing on the target: no image, no half-written restore; the source copy is untouched.
      const restores = path.join(cluster.dataDir, 'hosts', target, 'restores');
      expect(fs.existsSync(imagePath(cluster.dataDir, target, volume.volumeId))).toBe(false);
      expect(fs.existsSync(restores) ? fs.readdirSync(restores, { recursive: true }) : []).toEqual([]);
      expect(fs.existsSync(imagePath(cluster.dataDir, instance.hostId, volume.volumeId))).toBe(true);
      expect(cluster.workers.fleet.localAgent(target)!.instance(instance.instanceId)).toBeUndefined();
      // The reservation was released: the inventory is as it was.
      expect(JSON.stringify(cluster.workers.inventory.snapshot())).toBe(inventoryBefore);
      expect(cluster.workers.inventory.listReservations()).toEqual([]);
    } finally {
      repair();
    }
  });

  it('uploads only the changed chunks in a second snapshot', async () => {
    const { instance, volume } = byAccount('acct-incr');
    const first = await snapshot(instance.instanceId);
    expect(first.bytesUploaded).toBe(volumeSize);

    // A few 4 KiB writes in three different blocks, straight through the host's device.
    const device = await cluster.workers.fleet.localAgent(instance.hostId)!.device(volume.volumeId);
    const offsets = [0, 5 * volume.blockSize + 4096, volumeSize - 4096];
    for (const offset of offsets) await device.write(offset, Buffer.alloc(4096, 0xa5));

    const second = await snapshot(instance.instanceId);
    expect(second.bytesUploaded).toBeGreaterThanOrEqual(offsets.length * second.chunkSize);
    expect(second.bytesUploaded).toBeLessThanOrEqual(0.02 * volumeSize + second.chunkSize);
    // And the second snapshot holds the new bytes: it is complete, not just its new chunks.
    const expected = await snapshotBytes(cluster.workers.snapshots, instance.account, first.snapshotId);
    for (const offset of offsets) expected.fill(0xa5, offset, offset + 4096);
    const stored = await snapshotBytes(cluster.workers.snapshots, instance.account, second.snapshotId);
    expect(stored.equals(expected)).toBe(true);
  });

  it(
    'restores from the snapshot on a third host when the switch fails and the source is dead',
    async () => {
      const { instance, volume } = byAccount('acct-lost');
      const source = instance.hostId;
      const [target, third] = otherHosts(source);
      doomed = { instanceId: instance.instanceId, targetHostId: target };

      const result: LiveMigrationResult = await cluster.client.workflow.execute('liveMigration', {
        taskQueue: CONTROL_TASK_QUEUE,
        workflowId: 'it-migrate-doomed',
        args: [{ instanceId: instance.instanceId, targetHostId: target }],
      });

      expect(cluster.workers.hosts()).not.toContain(source);
      expect(result.restored).toMatchObject({
        instanceId: instance.instanceId,
        fromHostId: source,
        hostId: third,
        previousReleased: false,
      });
      expect(result.snapshotIds).toHaveLength(1);
      const snapshotId = result.snapshotIds![0];
      expect(result.restored!.snapshotIds).toEqual([snapshotId]);

      // It runs on the third host, from the snapshot: the snapshot is the volume as of its instant,
      // and the third host's image is the snapshot plus what the instance wrote there.
      await quiesceOn(third, instance.instanceId);
      const log = readWorkloadLog(cluster.dataDir, instance.instanceId);
      const hosts = new Set(log.map((e) => e.host));
      expect(hosts.has(target)).toBe(false);
      const stored = await snapshotBytes(cluster.workers.snapshots, instance.account, snapshotId);
      const info = await cluster.workers.snapshots.info(instance.account, snapshotId);
      expect(info.sourceEvent).toBe('migration:it-migrate-doomed');
      // The migration's snapshot child says which write the snapshot's instant follows.
      const child: PreMigrationSnapshotResult = await cluster.client.workflow
        .getHandle('it-migrate-doomed-snapshot')
        .result();
      expect(child.snapshots.map((s) => s.snapshotId)).toEqual([snapshotId]);
      // Both children (snapshot and restore) say in the Web UI what they are for.
      const { events } = await cluster.client.workflow.getHandle('it-migrate-doomed').fetchHistory();
      const children = (events ?? []).flatMap((e) =>
        e.childWorkflowExecutionStartedEventAttributes?.workflowExecution?.workflowId
          ? [e.childWorkflowExecutionStartedEventAttributes.workflowExecution.workflowId]
          : [],
      );
      expect(children).toHaveLength(2);
      const summaries = await Promise.all(
        children.map(async (id) => (await cluster.client.workflow.getHandle(id).describe()).staticSummary()),
      );
      expect(summaries).toEqual([
        `snapshot ${instance.instanceId} on ${source} (before it-migrate-doomed)`,
        `restore ${instance.instanceId} from ${snapshotId} → a placed host (after it-migrate-doomed lost ${source})`,
      ]);
      const atSeq = child.snapshots[0].atSeq;
      expect(stored.equals(volumeAsOf(volume, instance.instanceId, log, atSeq))).toBe(true);
      expect(cluster.workers.fleet.localAgent(third)!.instance(instance.instanceId)!.state).toBe('running');
      const onThird = log.filter((e) => e.host === third);
      expect(onThird.length).toBeGreaterThan(0);
      const expected = overlayLoggedWrites(
        Buffer.from(stored),
        instance.instanceId,
        volume.volumeId,
        onThird,
      );
      expect(fs.readFileSync(imagePath(cluster.dataDir, third, volume.volumeId)).equals(expected)).toBe(true);

      // The target kept nothing; the dead source's copy is left where it was (it did not answer).
      expect(fs.existsSync(imagePath(cluster.dataDir, target, volume.volumeId))).toBe(false);
      expect(fs.existsSync(imagePath(cluster.dataDir, source, volume.volumeId))).toBe(true);
      const inventory = cluster.workers.inventory;
      expect(inventory.getInstance(instance.instanceId)!.hostId).toBe(third);
      expect(inventory.getVolume(volume.volumeId)!.hostId).toBe(third);
      expect(inventory.listReservations()).toEqual([]);
      expect(inventory.checkConsistency()).toEqual([]);
    },
    // The source counts as lost after 10 s, and the restore waits 20 s for it to drop its copy.
    90_000,
  );

  it(
    'a host that comes back does not run an instance restored elsewhere while it was away',
    async () => {
      const { instance, volume } = byAccount('acct-fence');
      const away = instance.hostId;
      // Test 4 stopped its source for good: this test needs two other hosts that still answer.
      const lost = byAccount('acct-lost').instance.hostId;
      expect(away).not.toBe(lost);
      const [third] = otherHosts(away, lost);
      const snap = await snapshot(instance.instanceId);
      await cluster.workers.stopHost(away);
      // Stopped with the host, its record still says running: what a restart resumes.
      const record = path.join(cluster.dataDir, 'hosts', away, 'instances', `${instance.instanceId}.json`);
      expect(JSON.parse(fs.readFileSync(record, 'utf8'))).toMatchObject({ state: 'running' });

      const restored = await restore({
        account: instance.account,
        snapshotIds: [snap.snapshotId],
        targetHostId: third,
      });
      expect(restored).toMatchObject({ hostId: third, fromHostId: away, previousReleased: false });
      const restoredAtMs = Date.now();

      // The host comes back: a worker serving it starts again, with the same data and inventory.
      const connection = await NativeConnection.connect({ address: cluster.server.address });
      const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
      const back = await startWorkers({
        connection,
        namespace: cluster.server.namespace,
        dataDir: cluster.dataDir,
        hosts: [away],
        control: false,
      });
      try {
        const agent = back.fleet.localAgent(away)!;
        expect(agent.workload(instance.instanceId)).toBeUndefined();
        expect(agent.instance(instance.instanceId)).toMatchObject({
          state: 'stopped',
          fenced: { placedOn: third },
        });
        expect(warn.mock.calls.map((c) => String(c[0]))).toContainEqual(
          expect.stringContaining(`host ${away} does not resume instance ${instance.instanceId}`),
        );
        // Only the restored copy writes; the fenced one keeps its image for inspection.
        await waitFor(`${instance.instanceId} to write on ${third}`, () =>
          readWorkloadLog(cluster.dataDir, instance.instanceId).some(
            (e) => e.host === third && e.t > restoredAtMs,
          ),
        );
        const log = readWorkloadLog(cluster.dataDir, instance.instanceId);
        expect(log.filter((e) => e.host === away && e.t > restoredAtMs)).toEqual([]);
        expect(fs.existsSync(imagePath(cluster.dataDir, away, volume.volumeId))).toBe(true);
        expect(cluster.workers.inventory.getInstance(instance.instanceId)!.hostId).toBe(third);
        // Fleet check shows the operator the copy left behind, and no second copy running.
        const violations = await checkFleet({
          dataDir: cluster.dataDir,
          inventory: cluster.workers.inventory,
          activeWorkflowIds: (ids) => runningWorkflows(cluster.client, ids),
        });
        const about = violations.filter((v) => v.message.includes(`instance ${instance.instanceId} `));
        expect(about.map((v) => v.kind)).toContain('orphan-instance-record');
        expect(about.map((v) => v.kind)).not.toContain('instance-placement');
      } finally {
        warn.mockRestore();
        await back.shutdown();
        await connection.close();
      }
    },
    // The restore waits 20 s for the stopped host to drop its copy.
    60_000,
  );
});
