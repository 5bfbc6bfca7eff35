import type { Command } from 'commander';
import {
  formatBytes,
  formatRate,
  assertId,
  DEFAULT_WORKLOAD,
  type FleetLayout,
  type FleetSpec,
  type InstanceRecord,
} from '../contracts';
import { checkFleet, type FleetViolation } from '../fleet/fleet-check';
import type { Inventory } from '../fleet/inventory';
import { runningWorkflows } from '../temporal/running-workflows';
import { CliContext } from './context';
import { errorLine } from './errors';
import { keyValues, table } from './format';
import { parseCount, parseRate, parseSize } from './sizes';
import { fleetInitRequest, reportStarted, startOperation } from './start';

interface InitOptions {
  hosts: number;
  instances: number;
  volumeSize: number;
  writeRate: number;
  wait?: boolean;
}

export function registerFleet(program: Command): void {
  const fleet = program.command('fleet').description('create and inspect the simulated fleet');

  fleet
    .command('init')
    .description('create hosts and running instances with real volume images (workflow fleetInit)')
    .requiredOption('--hosts <n>', 'number of hosts', (v) => parseCount(v, '--hosts'))
    .requiredOption('--instances <n>', 'number of instances', (v) => parseCount(v, '--instances'))
    .requiredOption('--volume-size <size>', 'size of each instance volume, e.g. 256MiB', (v) =>
      parseSize(v, '--volume-size'),
    )
    .option('--write-rate <rate>', 'bytes/s each instance workload writes, e.g. 4MiB (0 = idle)', (v) =>
      parseRate(v, '--write-rate'),
    )
    .option('--wait', 'wait until the fleet is running')
    .action(async (opts: InitOptions, command: Command) => {
      const ctx = CliContext.of(command);
      const spec: FleetSpec = {
        hosts: opts.hosts,
        instances: opts.instances,
        volumeSizeBytes: opts.volumeSize,
        workload: {
          ...DEFAULT_WORKLOAD,
          writeBytesPerSec: opts.writeRate ?? DEFAULT_WORKLOAD.writeBytesPerSec,
        },
      };
      const handle = await startOperation(ctx, fleetInitRequest(spec));
      if (!opts.wait)
        return reportStarted(ctx, handle, 'add --wait to wait for it; `rehome fleet list` shows the fleet');
      ctx.say(`${handle.workflowId}: creating the fleet...`);
      const layout = (await handle.result()) as FleetLayout;
      ctx.emit({ workflowId: handle.workflowId, ...layout });
      ctx.say(
        `created ${layout.hosts.length} hosts, ${layout.instances.length} instances, ${layout.volumes.length} volumes (${handle.workflowId})`,
      );
    });

  fleet
    .command('list')
    .description('hosts with their usage, and instances')
    .action((_opts: unknown, command: Command) => {
      const ctx = CliContext.of(command);
      const inventory = ctx.inventory();
      const hosts = inventory.listHosts().map((h) => ({ ...h, usage: inventory.hostUsage(h.hostId) }));
      const instances = inventory.listInstances();
      const volumes = inventory.listVolumes();
      ctx.emit({ hosts, instances, volumes });
      if (ctx.json) return;
      ctx.say(
        table(
          ['host', 'zone', 'instances', 'vCPU used', 'memory used', 'disk used'],
          hosts.map((h) => [
            h.hostId,
            h.zone,
            instances.filter((i) => i.hostId === h.hostId).length,
            `${h.usage.used.vcpu}/${h.usage.capacity.vcpu}`,
            `${formatBytes(h.usage.used.memoryMiB * 1024 * 1024)}/${formatBytes(h.usage.capacity.memoryMiB * 1024 * 1024)}`,
            `${formatBytes(h.usage.used.diskBytes)}/${formatBytes(h.usage.capacity.diskBytes)}`,
          ]),
        ),
      );
      ctx.say(
        table(
          ['instance', 'account', 'host', 'state', 'volumes', 'disk', 'workload'],
          instances.map((i) => {
            const own = volumes.filter((v) => v.instanceId === i.instanceId);
            return [
              i.instanceId,
              i.account,
              i.hostId,
              i.state,
              own.map((v) => v.volumeId + (v.userData ? ' (user data)' : '')).join(', '),
              formatBytes(own.reduce((sum, v) => sum + v.sizeBytes, 0)),
              formatRate(i.workload.writeBytesPerSec).replace('unlimited', 'idle'),
            ];
          }),
        ),
      );
    });

  fleet
    .command('show <id>')
    .description('one instance (with its volumes) or one host (with its usage and instances)')
    .action((id: string, _opts: unknown, command: Command) => {
      const ctx = CliContext.of(command);
      assertId('id', id);
      const inventory = ctx.inventory();
      const instance = inventory.getInstance(id);
      if (instance) return showInstance(ctx, inventory, instance);
      const host = inventory.getHost(id);
      if (!host)
        throw new Error(`no instance or host ${JSON.stringify(id)}: \`rehome fleet list\` shows what exists`);
      const usage = inventory.hostUsage(id);
      const instances = inventory.listInstances({ hostId: id });
      ctx.emit({ ...host, usage, instances });
      ctx.say(
        keyValues([
          ['host', host.hostId],
          ['zone', host.zone],
          ['vCPU', `${usage.used.vcpu} used of ${usage.capacity.vcpu}`],
          ['memory', `${usage.used.memoryMiB} MiB used of ${usage.capacity.memoryMiB} MiB`],
          ['disk', `${formatBytes(usage.used.diskBytes)} used of ${formatBytes(usage.capacity.diskBytes)}`],
          ['instances', instances.map((i) => `${i.instanceId} (${i.state})`).join(', ') || '-'],
        ]),
      );
    });

  fleet
    .command('check')
    .description(
      'check the fleet invariants (one host per instance, capacity, images where and as big as the inventory says, no orphans); exits 1 listing violations',
    )
    .action((_opts: unknown, command: Command) => checkCommand(CliContext.of(command)));
}

/**
 * `fleet check`: the invariants of fleet-check.ts against this data dir. Reservations are checked
 * against the workflows that made them when Temporal answers; otherwise everything else still is.
 */
async function checkCommand(ctx: CliContext): Promise<void> {
  const inventory = ctx.inventory();
  let unchecked: string | undefined;
  let violations: FleetViolation[] | undefined;
  const client = await ctx.client().catch((err: unknown) => {
    unchecked = errorLine(err);
    return undefined;
  });
  if (client) {
    try {
      violations = await checkFleet({
        dataDir: ctx.dataDir,
        inventory,
        activeWorkflowIds: (ids) => runningWorkflows(client, ids),
      });
    } catch (err) {
      unchecked = errorLine(err);
    }
  }
  violations ??= await checkFleet({ dataDir: ctx.dataDir, inventory });
  const note = unchecked && `reservations were not checked against workflows (${unchecked})`;
  ctx.emit({ ok: violations.length === 0, reservationsChecked: !unchecked, note, violations });
  if (violations.length > 0) {
    ctx.say(
      table(
        ['kind', 'subject', 'problem and what to do'],
        violations.map((v) => [v.kind, v.subject, v.message]),
      ),
    );
    if (note) ctx.say(`note: ${note}`);
    throw new Error(
      `${violations.length} fleet invariant violation${violations.length === 1 ? '' : 's'} in ${ctx.dataDir}`,
    );
  }
  const hosts = inventory.listHosts().length;
  const instances = inventory.listInstances().length;
  const volumes = inventory.listVolumes().length;
  ctx.say(
    `fleet OK: ${hosts} hosts, ${instances} instances, ${volumes} volumes, every image where the inventory says${note ? `; ${note}` : ''}`,
  );
}

function showInstance(ctx: CliContext, inventory: Inventory, instance: InstanceRecord): void {
  const volumes = inventory.listVolumes({ instanceId: instance.instanceId });
  ctx.emit({ ...instance, volumes });
  ctx.say(
    keyValues([
      ['instance', instance.instanceId],
      ['account', instance.account],
      ['host', instance.hostId],
      ['state', instance.state],
      [
        'shape',
        `${instance.shape.vcpu} vCPU, ${instance.shape.memoryMiB} MiB, ${formatBytes(instance.shape.diskBytes)} disk`,
      ],
      [
        'workload',
        `${formatRate(instance.workload.writeBytesPerSec).replace('unlimited', 'idle')} in ${instance.workload.writeSize} B writes`,
      ],
      [
        'tags',
        Object.entries(instance.tags)
          .map(([k, v]) => `${k}=${v}`)
          .join(', ') || '-',
      ],
      ...volumes.map(
        (v) =>
          [
            `volume ${v.volumeId}`,
            `${formatBytes(v.sizeBytes)}, ${v.blockSize / 1024} KiB blocks${v.userData ? ', user data' : ''}`,
          ] as [string, string],
      ),
    ]),
  );
}
