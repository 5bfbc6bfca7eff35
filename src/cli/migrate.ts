import type { Command } from 'commander';
import { assertId, formatRate, type LiveMigrationInput } from '../contracts';
import { CliContext } from './context';
import { followMigration, migrationSummary } from './progress';
import { parseRate } from './sizes';
import { migrationRequest, reportStarted, startOperation } from './start';

interface MigrateOptions {
  to: string;
  bandwidth?: number;
  wait?: boolean;
}

export function registerMigrate(program: Command): void {
  program
    .command('migrate <instanceId>')
    .description(
      'live-migrate a running instance to another host (post-sync: switch first, copy the disk after)',
    )
    .requiredOption('--to <hostId>', 'target host')
    .option(
      '--bandwidth <rate>',
      'limit of the background copy, e.g. 100MiB (per second; 0 = unlimited)',
      (v) => parseRate(v, '--bandwidth'),
    )
    .option('--wait', 'show progress until done, then downtime, bytes moved and duration')
    .action(async (instanceArg: string, opts: MigrateOptions, command: Command) => {
      const ctx = CliContext.of(command);
      const instanceId = assertId('instance id', instanceArg);
      const targetHostId = assertId('target host id', opts.to);
      // The workflow validates everything itself; the inventory, when this machine has it, only
      // lets us fail faster and label the workflow with its source host and account.
      const inventory = ctx.maybeInventory();
      const instance = inventory?.getInstance(instanceId);
      if (inventory && !instance) {
        throw new Error(
          `no instance ${JSON.stringify(instanceId)}: \`rehome fleet list\` shows the instances`,
        );
      }
      if (inventory && !inventory.getHost(targetHostId)) {
        throw new Error(`no host ${JSON.stringify(targetHostId)}: \`rehome fleet list\` shows the hosts`);
      }
      const input: LiveMigrationInput = {
        instanceId,
        targetHostId,
        bandwidthBytesPerSec: opts.bandwidth ?? 0,
      };
      const handle = await startOperation(ctx, migrationRequest(input, instance));
      if (!opts.wait) {
        const limit = opts.bandwidth ? ` at ${formatRate(opts.bandwidth)}` : '';
        return reportStarted(
          ctx,
          handle,
          `migrating ${instanceId} to ${targetHostId}${limit}; follow it with \`rehome status ${handle.workflowId}\``,
        );
      }
      ctx.say(`${handle.workflowId}: migrating ${instanceId} to ${targetHostId}`);
      const result = await followMigration(handle, ctx);
      ctx.emit({ workflowId: handle.workflowId, ...result });
      ctx.say(migrationSummary(result));
    });
}
