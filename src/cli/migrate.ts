import type { Command } from 'commander';
import { assertId, formatRate, type LiveMigrationInput, type LiveMigrationResult } from '../contracts';
import { CliContext } from './context';
import { followMigration, migrationSummary } from './progress';
import { restoreSummary } from './restore';
import { parseRate } from './sizes';
import { migrationRequest, reportStarted, startOperation } from './start';

interface MigrateOptions {
  to: string;
  bandwidth?: number;
  /** False with --no-snapshot. */
  snapshot: boolean;
  keepSnapshot?: boolean;
  wait?: boolean;
}

/** The input of `rehome migrate`, checked before anything is contacted; defaults are left to the workflow. */
export function migrationInput(
  instanceArg: string,
  opts: Pick<MigrateOptions, 'to' | 'bandwidth' | 'snapshot' | 'keepSnapshot'>,
): LiveMigrationInput {
  const input: LiveMigrationInput = {
    instanceId: assertId('instance id', instanceArg),
    targetHostId: assertId('target host id', opts.to),
    bandwidthBytesPerSec: opts.bandwidth ?? 0,
  };
  if (opts.snapshot === false) {
    if (opts.keepSnapshot) {
      throw new Error('--keep-snapshot needs the snapshot that --no-snapshot turns off: give one of them');
    }
    input.snapshot = false;
  }
  if (opts.keepSnapshot) input.keepSnapshot = true;
  return input;
}

/** Says plainly that the instance did not migrate but was restored, where, and from what. */
export function restoredLine(r: LiveMigrationResult): string | undefined {
  if (!r.restored) return undefined;
  const ids = r.restored.snapshotIds.join(', ');
  return `${r.instanceId} was restored from snapshot ${ids} on host ${r.restored.hostId} instead of migrated: the switch to ${r.targetHostId} failed and ${r.sourceHostId} was lost (writes after the snapshot are lost)`;
}

/** What `migrate --wait` prints at the end. */
export function migrationOutcome(r: LiveMigrationResult): string {
  const restored = restoredLine(r);
  if (restored && r.restored) return `${restored}\n${restoreSummary(r.restored)}`;
  const kept = r.snapshotIds?.length ? `\npre-migration snapshot kept: ${r.snapshotIds.join(', ')}` : '';
  return migrationSummary(r) + kept;
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
    .option(
      '--no-snapshot',
      'do not snapshot instance-store volumes before the switch (no restore if target and source both fail)',
    )
    .option('--keep-snapshot', 'keep the pre-migration snapshot after a successful migration')
    .option('--wait', 'show progress until done, then downtime, bytes moved and duration')
    .action(async (instanceArg: string, opts: MigrateOptions, command: Command) => {
      const ctx = CliContext.of(command);
      const input = migrationInput(instanceArg, opts);
      const { instanceId, targetHostId } = input;
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
      ctx.say(migrationOutcome(result));
    });
}
