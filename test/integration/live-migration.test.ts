import fs from 'node:fs';
import path from 'node:path';
import {
  CONTROL_TASK_QUEUE,
  MiB,
  type FleetLayout,
  type LiveMigrationResult,
  type MigrationProgress,
} from '../../src/contracts';
import { openInventory, type Inventory } from '../../src/fleet/inventory';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { overlayLoggedWrites, readWorkloadLog } from '../../src/fleet/workload-log';
import { startCluster, type TestCluster } from '../helpers/cluster';

// A real embedded Temporal server, real workers and host agents, real images: an instance is migrated
// while its workload keeps writing, and the bytes are checked against the workload's own log.
describe('live migration with post-sync (integration)', () => {
  let cluster: TestCluster;
  let inventory: Inventory;
  let layout: FleetLayout;
  const volumeSize = 32 * MiB;

  beforeAll(async () => {
    cluster = await startCluster();
    layout = await cluster.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-fleet-init',
      args: [
        {
          hosts: 3,
          instances: 2,
          volumeSizeBytes: volumeSize,
          workload: { writeBytesPerSec: 2 * MiB, writeSize: 4096 },
        },
      ],
    });
    inventory = openInventory(cluster.dataDir);
  });

  afterAll(async () => {
    inventory?.close();
    await cluster?.stop();
  });

  it('moves a writing instance: target = source content overlaid with every logged write', async () => {
    const instance = layout.instances[0];
    const volume = layout.volumes.find((v) => v.instanceId === instance.instanceId)!;
    const source = instance.hostId;
    const target = layout.hosts.find((h) => h.hostId !== source)!.hostId;

    // A bandwidth limit stretches the sync over a few seconds so the workload writes during it.
    const handle = await cluster.client.workflow.start('liveMigration', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-migrate-writing',
      args: [{ instanceId: instance.instanceId, targetHostId: target, bandwidthBytesPerSec: 8 * MiB }],
    });
    let sawSyncing = false;
    for (let i = 0; i < 200; i++) {
      const p: MigrationProgress = await handle.query('progress');
      if (p.phase === 'syncing' && p.blocksTotal > 0) {
        sawSyncing = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    const result: LiveMigrationResult = await handle.result();

    expect(sawSyncing).toBe(true);
    expect(result.sourceHostId).toBe(source);
    expect(result.targetHostId).toBe(target);
    expect(result.bytesCopied).toBeGreaterThan(0);
    expect(result.bytesReadThrough).toBeGreaterThan(0);
    expect(result.blocksWrittenOnTarget).toBeGreaterThan(0);

    // Quiesce the instance on its new host so its image can be compared with the log.
    await cluster.workers.fleet.localAgent(target)!.workload(instance.instanceId)!.pause();
    const log = readWorkloadLog(cluster.dataDir, instance.instanceId);
    const switchSeq = log.findIndex((e) => e.host === target);
    expect(switchSeq).toBeGreaterThan(0);
    expect(log.slice(0, switchSeq).every((e) => e.host === source)).toBe(true);
    expect(log.slice(switchSeq).every((e) => e.host === target)).toBe(true);
    expect(log.map((e) => e.seq)).toEqual(log.map((_, i) => log[0].seq + i));

    const expected = overlayLoggedWrites(
      patternBytes(volumePatternSeed(volume.volumeId), volume.sizeBytes),
      instance.instanceId,
      volume.volumeId,
      log,
    );
    const targetImage = path.join(cluster.dataDir, 'hosts', target, 'volumes', `${volume.volumeId}.img`);
    const actual = fs.readFileSync(targetImage);
    expect(actual.length).toBe(expected.length);
    expect(actual.equals(expected)).toBe(true);

    // The source is released and the inventory agrees with the hosts.
    expect(
      fs.existsSync(path.join(cluster.dataDir, 'hosts', source, 'volumes', `${volume.volumeId}.img`)),
    ).toBe(false);
    expect(fs.existsSync(targetImage.replace(/\.img$/, '.map'))).toBe(false);
    expect(inventory.getInstance(instance.instanceId)!.hostId).toBe(target);
    expect(inventory.getVolume(volume.volumeId)!.hostId).toBe(target);
    expect(inventory.listReservations()).toEqual([]);
    expect(inventory.checkConsistency()).toEqual([]);
  });

  it('sets the search attributes and details the Web UI shows', async () => {
    const description = await cluster.client.workflow.getHandle('it-migrate-writing').describe();
    const attrs = description.searchAttributes as Record<string, unknown[]>;
    expect(attrs.InstanceId).toEqual([layout.instances[0].instanceId]);
    expect(attrs.Operation).toEqual(['live-migration']);
    expect(attrs.Phase).toEqual(['completed']);
    expect(attrs.Account).toEqual([layout.instances[0].account]);
    expect(attrs.HostId).toHaveLength(1);
    const found = [];
    for await (const wf of cluster.client.workflow.list({
      query: `InstanceId = "${layout.instances[0].instanceId}"`,
    })) {
      found.push(wf.workflowId);
    }
    expect(found).toContain('it-migrate-writing');
  });
});
