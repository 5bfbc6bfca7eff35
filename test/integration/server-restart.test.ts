import {
  CONTROL_TASK_QUEUE,
  MiB,
  type FleetLayout,
  type LiveMigrationResult,
  type MigrationProgress,
} from '../../src/contracts';
import { checkFleet } from '../../src/fleet/fleet-check';
import { openInventory } from '../../src/fleet/inventory';
import { runningWorkflows } from '../../src/temporal/running-workflows';
import { checkImages } from '../helpers/crash-driver';
import { startProcessCluster, type ProcessCluster } from '../helpers/process-cluster';

// Issue 4, part 3: the embedded Temporal server is stopped and started again (same ports, same
// SQLite file) while live migrations of writing instances run; the workers are separate processes
// that stay up and reconnect. Every migration completes and every image is right.
describe('server restart: the embedded Temporal server restarts mid-migration', () => {
  let cluster: ProcessCluster;
  let layout: FleetLayout;

  beforeAll(async () => {
    cluster = await startProcessCluster({
      hostGroups: [
        ['h-1', 'h-2'],
        ['h-3', 'h-4'],
      ],
    });
    layout = await cluster.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'restart-fleet',
      args: [
        {
          hosts: 4,
          instances: 4,
          volumeSizeBytes: 16 * MiB,
          workload: { writeBytesPerSec: MiB, writeSize: 4096 },
        },
      ],
    });
  }, 180_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  const partner = (hostId: string) => ({ 'h-1': 'h-2', 'h-2': 'h-1', 'h-3': 'h-4', 'h-4': 'h-3' })[hostId]!;

  it('completes every migration across two restarts, with correct images and a consistent fleet', async () => {
    // A 2 MiB/s copy of 16 MiB takes about 8 s: long enough to restart the server during it.
    const handles = await Promise.all(
      layout.instances.map((instance) =>
        cluster.client.workflow.start('liveMigration', {
          taskQueue: CONTROL_TASK_QUEUE,
          workflowId: `restart-migrate-${instance.instanceId}`,
          args: [
            {
              instanceId: instance.instanceId,
              targetHostId: partner(instance.hostId),
              bandwidthBytesPerSec: 2 * MiB,
            },
          ],
        }),
      ),
    );
    const phasesAt = async () =>
      Promise.all(handles.map((h) => h.query<MigrationProgress>('progress').then((p) => p.phase)));

    // First restart once a migration is copying, the second while the rest are wherever they are.
    let atFirst: string[] = [];
    for (let i = 0; i < 600; i++) {
      atFirst = await phasesAt();
      if (atFirst.includes('syncing')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await cluster.restartServer();
    await new Promise((r) => setTimeout(r, 2000));
    await cluster.restartServer();

    const results: LiveMigrationResult[] = await Promise.all(handles.map((h) => h.result()));
    expect(atFirst).toContain('syncing');
    for (const [n, instance] of layout.instances.entries()) {
      expect(results[n].instanceId).toBe(instance.instanceId);
      expect(results[n].targetHostId).toBe(partner(instance.hostId));
      expect(results[n].restored).toBeUndefined();
    }
    // State written before the restarts is still there: the SQLite file kept it.
    const fleetInit = await cluster.client.workflow.getHandle('restart-fleet').describe();
    expect(fleetInit.status.name).toBe('COMPLETED');

    await cluster.stopHosts();
    const inventory = openInventory(cluster.dataDir);
    try {
      for (const instance of layout.instances) {
        expect(inventory.getInstance(instance.instanceId)!.hostId).toBe(partner(instance.hostId));
      }
      const images = checkImages(cluster.dataDir, inventory, layout);
      expect(images.corrupt).toEqual([]);
      expect(images.volumesChecked).toBe(4);
      expect(inventory.checkConsistency()).toEqual([]);
      const violations = await checkFleet({
        dataDir: cluster.dataDir,
        inventory,
        activeWorkflowIds: (ids) => runningWorkflows(cluster.client, ids),
      });
      expect(violations).toEqual([]);
    } finally {
      inventory.close();
    }
  }, 240_000);
});
