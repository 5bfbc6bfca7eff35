import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import fs from 'node:fs';
import {
  CONTROL_TASK_QUEUE,
  ErrorType,
  MiB,
  WorkflowType,
  type FleetLayout,
  type InstanceRecord,
  type LiveMigrationResult,
  type VolumeRecord,
} from '../../src/contracts';
import { checkFleet } from '../../src/fleet/fleet-check';
import type { Inventory } from '../../src/fleet/inventory';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { overlayLoggedWrites, readWorkloadLog } from '../../src/fleet/workload-log';
import { startCluster, type TestCluster } from '../helpers/cluster';
import { expectApplicationFailure } from '../helpers/failures';
import { runLoad } from '../helpers/load-driver';
import { imagePath } from '../helpers/snapshot-checks';

/** Every host within capacity in every dimension right now; one sentence per host that is not. */
function overcommitted(inventory: Inventory): string[] {
  return inventory.listHosts().flatMap((h) => {
    const { capacity, used } = inventory.hostUsage(h.hostId);
    return (['vcpu', 'memoryMiB', 'diskBytes'] as const)
      .filter((d) => used[d] > capacity[d])
      .map((d) => `${h.hostId} uses ${used[d]} ${d} of ${capacity[d]}`);
  });
}

/** The volume's image as its instance's workload log says it must be (workload paused first). */
function expectedImage(dataDir: string, volume: VolumeRecord): Buffer {
  return overlayLoggedWrites(
    patternBytes(volumePatternSeed(volume.volumeId), volume.sizeBytes),
    volume.instanceId,
    volume.volumeId,
    readWorkloadLog(dataDir, volume.instanceId),
  );
}

// 50 migrations at once, all aimed at 3 hosts that have room for 9 of them: placement is decided by
// reservations in one SQLite transaction each, so the 10th asker on a full host must be refused.
describe('50 concurrent migrations aimed at 3 hosts with room for only some (integration)', () => {
  const TARGETS = ['h-1', 'h-2', 'h-3'];
  /** Each target has 10 instances of 1 vCPU and room for 3 more: vCPU is the only scarce resource. */
  const ROOM_PER_TARGET = 3;
  let cluster: TestCluster;
  let layout: FleetLayout;

  beforeAll(async () => {
    cluster = await startCluster();
    layout = await cluster.client.workflow.execute(WorkflowType.fleetInit, {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'cc-fleet',
      args: [
        {
          hosts: 8,
          instances: 80,
          volumeSizeBytes: 2 * MiB,
          workload: { writeBytesPerSec: 16 * 1024, writeSize: 4096 },
          instanceShape: { vcpu: 1, memoryMiB: 1024 },
          hostCapacity: { vcpu: 10 + ROOM_PER_TARGET, memoryMiB: 1024 * 1024, diskBytes: 1024 * MiB },
        },
      ],
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('never overcommits a host; the rest fail cleanly with NoCapacity naming the host and what is short', async () => {
    const inventory = cluster.workers.inventory;
    for (const hostId of TARGETS) {
      expect(inventory.hostUsage(hostId).free.vcpu).toBe(ROOM_PER_TARGET);
    }
    const movers = layout.instances.filter((i) => !TARGETS.includes(i.hostId));
    expect(movers).toHaveLength(50);
    const plans = movers.map((instance, n) => ({ instance, target: TARGETS[n % TARGETS.length] }));

    // Sample the inventory while the migrations run: no host over capacity at any moment.
    const violations: string[] = [];
    let samples = 0;
    let maxReservations = 0;
    const sampler = setInterval(() => {
      samples += 1;
      violations.push(...overcommitted(inventory), ...inventory.checkConsistency());
      maxReservations = Math.max(maxReservations, inventory.listReservations().length);
    }, 50);

    let outcomes: {
      instance: InstanceRecord;
      target: string;
      result?: LiveMigrationResult;
      error?: unknown;
    }[];
    try {
      const handles: WorkflowHandle[] = await Promise.all(
        plans.map(({ instance, target }) =>
          cluster.client.workflow.start(WorkflowType.liveMigration, {
            taskQueue: CONTROL_TASK_QUEUE,
            workflowId: `cc-${instance.instanceId}-to-${target}`,
            args: [{ instanceId: instance.instanceId, targetHostId: target }],
          }),
        ),
      );
      outcomes = await Promise.all(
        handles.map(async (handle, n) => {
          try {
            return { ...plans[n], result: (await handle.result()) as LiveMigrationResult };
          } catch (error) {
            return { ...plans[n], error };
          }
        }),
      );
    } finally {
      clearInterval(sampler);
    }
    violations.push(...overcommitted(inventory));

    expect(samples).toBeGreaterThan(0);
    expect(maxReservations).toBeLessThanOrEqual(TARGETS.length * ROOM_PER_TARGET);
    expect(violations).toEqual([]);

    // The design refuses rather than waits: a full host fails the migration at once, cleanly.
    const completed = outcomes.filter((o) => o.result);
    const refused = outcomes.filter((o) => o.error);
    for (const { instance, target, error } of refused) {
      expect(error).toBeInstanceOf(WorkflowFailedError);
      const failure = expectApplicationFailure((error as WorkflowFailedError).cause, ErrorType.NoCapacity);
      expect(failure.message).toContain(`host ${target} has 0 vCPU free`);
      expect(failure.message).toContain(`instance ${instance.instanceId} needs 1 vCPU`);
      expect(failure.message).not.toMatch(/memory|disk/);
    }
    // Capacity is not wasted either: every free slot went to exactly one migration.
    for (const target of TARGETS) {
      expect(completed.filter((o) => o.target === target)).toHaveLength(ROOM_PER_TARGET);
      expect(inventory.hostUsage(target).free.vcpu).toBe(0);
    }
    expect(completed).toHaveLength(TARGETS.length * ROOM_PER_TARGET);
    expect(refused).toHaveLength(50 - completed.length);

    expect(inventory.checkConsistency()).toEqual([]);
    expect(inventory.listReservations()).toEqual([]);
    expect(await checkFleet({ dataDir: cluster.dataDir, inventory })).toEqual([]);

    // Each instance is where its outcome says, with an image of the right size there and nowhere else.
    for (const { instance, target, result } of outcomes) {
      const home = result ? target : instance.hostId;
      const away = result ? instance.hostId : target;
      if (result) expect(result.targetHostId).toBe(target);
      expect(inventory.getInstance(instance.instanceId)!.hostId).toBe(home);
      for (const volume of inventory.listVolumes({ instanceId: instance.instanceId })) {
        expect(volume.hostId).toBe(home);
        const image = imagePath(cluster.dataDir, home, volume.volumeId);
        expect(fs.statSync(image).size).toBe(volume.sizeBytes);
        expect(fs.existsSync(image.replace(/\.img$/, '.map'))).toBe(false);
        expect(fs.existsSync(imagePath(cluster.dataDir, away, volume.volumeId))).toBe(false);
      }
    }

    // Bytes, for a sample: two moved instances and one refused one, quiesced where they run.
    const sample = [...completed.slice(0, 2), refused[0]];
    for (const { instance, target, result } of sample) {
      const home = result ? target : instance.hostId;
      await cluster.workers.fleet.localAgent(home)!.workload(instance.instanceId)!.pause();
      for (const volume of inventory.listVolumes({ instanceId: instance.instanceId })) {
        const actual = fs.readFileSync(imagePath(cluster.dataDir, home, volume.volumeId));
        expect(actual.equals(expectedImage(cluster.dataDir, volume))).toBe(true);
      }
    }
  });
});

describe('load: concurrent small migrations on the embedded server (integration)', () => {
  it('completes every migration and splits workflow time into activity time and overhead', async () => {
    const load = await runLoad({ migrations: 30, concurrency: 30 });

    expect(load.failures).toEqual([]);
    expect(load.completed).toBe(30);
    expect(load.inventoryProblems).toEqual([]);
    expect(load.reservationsLeft).toBe(0);
    expect(load.checkerViolations).toEqual([]);
    expect(load.timings).toHaveLength(30);
    for (const t of load.timings) {
      expect(Number.isFinite(t.overheadMs)).toBe(true);
      expect(t.overheadMs).toBeGreaterThanOrEqual(0);
      expect(t.activityMs).toBeGreaterThan(0);
      expect(t.workflowMs).toBeGreaterThanOrEqual(t.activityMs);
    }
    expect(Number.isFinite(load.migrationsPerSec)).toBe(true);
    expect(load.migrationsPerSec).toBeGreaterThan(0);
    expect(load.overheadP50Ms).toBeGreaterThanOrEqual(0);
    expect(load.overheadP99Ms).toBeGreaterThanOrEqual(load.overheadP50Ms);
    expect(Number.isFinite(load.overheadP99Ms)).toBe(true);
  });
});
