import { Command } from 'commander';
import type { Client } from '@temporalio/client';
import { errorLine, exitCodeFor } from './cli/errors';
import { parseCount } from './cli/sizes';
import { followMigration, migrationSummary } from './cli/progress';
import { shutdownSignals, startStackUnlessSignalled, unlessSignalled, type Stack } from './cli/stack';
import { fleetInitRequest, migrationRequest, startWorkflow } from './cli/start';
import {
  formatBytes,
  formatRate,
  MiB,
  type FleetLayout,
  type FleetSpec,
  type InstanceRecord,
  type LiveMigrationInput,
} from './contracts';
import type { Inventory } from './fleet/inventory';
import { pickHost } from './planning/placement';
import { dataDir as resolveDataDir, workflowListUrl, workflowUrl } from './temporal/connection';

const DEMO_FLEET: FleetSpec = { hosts: 4, instances: 8, volumeSizeBytes: 256 * MiB };

const say = (line: string) => console.log(line);

async function ensureFleet(client: Client, inventory: Inventory): Promise<void> {
  if (inventory.listInstances().length > 0) {
    say(
      `fleet: ${inventory.listHosts().length} hosts, ${inventory.listInstances().length} instances (already there)`,
    );
    return;
  }
  say(
    `fleet: creating ${DEMO_FLEET.hosts} hosts and ${DEMO_FLEET.instances} instances with ${formatBytes(DEMO_FLEET.volumeSizeBytes)} volumes...`,
  );
  const handle = await startWorkflow(client, fleetInitRequest(DEMO_FLEET));
  const layout = (await handle.result()) as FleetLayout;
  say(
    `fleet: created ${layout.hosts.length} hosts, ${layout.instances.length} instances (${handle.workflowId})`,
  );
}

/** A running instance whose workload writes (so the migration is live) and a host with room for it. */
function pickMigration(inventory: Inventory): { instance: InstanceRecord; targetHostId: string } {
  const loads = inventory.hostLoads();
  const candidates = inventory
    .listInstances()
    .filter((i) => i.state === 'running')
    .sort((a, b) => Number(b.workload.writeBytesPerSec > 0) - Number(a.workload.writeBytesPerSec > 0));
  for (const instance of candidates) {
    const targetHostId = pickHost(loads, instance.shape, [instance.hostId]);
    if (targetHostId) return { instance, targetHostId };
  }
  throw new Error(
    'no running instance has another host with room for it: start over with an empty --data-dir, or free a host',
  );
}

async function migrateOne(stack: Stack, inventory: Inventory): Promise<void> {
  const { instance, targetHostId } = pickMigration(inventory);
  const input: LiveMigrationInput = { instanceId: instance.instanceId, targetHostId };
  const handle = await startWorkflow(stack.client, migrationRequest(input, instance));
  const rate = instance.workload.writeBytesPerSec;
  say(
    `\nlive-migrating ${instance.instanceId} (${instance.account}) ${instance.hostId} → ${targetHostId} while its workload writes ${rate ? formatRate(rate) : 'nothing'}`,
  );
  const result = await followMigration(handle, { json: false, say });
  say(migrationSummary(result));
  say(`\nWeb UI`);
  say(`  this migration:        ${workflowUrl(stack.target, handle.workflowId) ?? handle.workflowId}`);
  say(
    `  everything on ${instance.instanceId}:`.padEnd(25) +
      (workflowListUrl(stack.target, `InstanceId = "${instance.instanceId}"`) ?? ''),
  );
}

async function main(argv: string[]): Promise<void> {
  const opts = new Command('rehome-demo')
    .description('embedded Temporal + workers, a fleet, and one live migration of a running instance')
    .option('--exit', 'stop everything at the end instead of waiting for Ctrl-C')
    .option('--data-dir <dir>', 'data directory (default $REHOME_DATA_DIR or ./.rehome)')
    .option('--port <port>', 'gRPC port of the embedded server (default 7233)', (v) =>
      parseCount(v, '--port'),
    )
    .option('--ui-port <port>', 'Web UI port of the embedded server (default 8233)', (v) =>
      parseCount(v, '--ui-port'),
    )
    .parse(argv)
    .opts<{ exit?: boolean; dataDir?: string; port?: number; uiPort?: number }>();
  const dir = resolveDataDir(opts.dataDir);
  const signals = shutdownSignals();
  say(`rehome demo (data in ${dir})`);
  const stack = await startStackUnlessSignalled(
    { dataDir: dir, port: opts.port, uiPort: opts.uiPort },
    signals.signalled,
  );
  // The workers' own inventory: this process already has it open.
  const { inventory } = stack.workers;
  try {
    say(
      `Temporal ${stack.target.address}${stack.server ? ' (embedded dev server)' : ''}, Web UI ${stack.target.uiUrl ?? '(unknown)'}`,
    );
    await unlessSignalled(signals.signalled, ensureFleet(stack.client, inventory));
    await unlessSignalled(signals.signalled, migrateOne(stack, inventory));
    if (!opts.exit) {
      say(
        `\nTemporal and the workers keep running for the Web UI (${stack.target.uiUrl ?? stack.target.address}); Ctrl-C to stop.`,
      );
      await signals.signalled;
    }
  } finally {
    say('stopping workers and server...');
    await stack.stop();
    signals.dispose();
  }
}

if (require.main === module) {
  main(process.argv).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(`rehome: ${errorLine(err)}`);
      process.exit(exitCodeFor(err));
    },
  );
}
