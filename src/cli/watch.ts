import { WorkflowNotFoundError, type Client, type WorkflowHandle } from '@temporalio/client';
import { CancelledFailure } from '@temporalio/common';
import type { Command } from 'commander';
import {
  formatBytes,
  formatRate,
  setBandwidthUpdate,
  shown,
  WorkflowType,
  type FleetLayout,
  type LiveMigrationResult,
  type MigrationProgress,
  type PreMigrationSnapshotResult,
  type RestoreInstanceResult,
  type SnapshotDeleteResult,
  type VolumeExportResult,
  type VolumeImportResult,
} from '../contracts';
import { workflowUrl } from '../temporal/connection';
import { CliContext } from './context';
import { errorLine } from './errors';
import { migrationOutcome } from './migrate';
import { followMigration, pollProgress } from './progress';
import { restoreSummary } from './restore';
import { deleteResultText, snapshotResultText } from './snapshot';
import { parseRate } from './sizes';

async function existing(client: Client, workflowId: string) {
  const handle = client.workflow.getHandle(workflowId);
  try {
    return { handle, description: await handle.describe() };
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) {
      throw new Error(
        `no workflow ${shown(workflowId)} in this namespace: check the id (the Web UI lists them)`,
      );
    }
    throw err;
  }
}

function isCancelled(err: unknown): boolean {
  return err instanceof Error && 'cause' in err && err.cause instanceof CancelledFailure;
}

/** One human line for a finished workflow's result. */
export function describeResult(type: string, result: unknown): string {
  switch (type) {
    case WorkflowType.liveMigration:
      return migrationOutcome(result as LiveMigrationResult);
    case WorkflowType.preMigrationSnapshot:
      return snapshotResultText(result as PreMigrationSnapshotResult);
    case WorkflowType.restoreInstance:
      return restoreSummary(result as RestoreInstanceResult);
    case WorkflowType.deleteSnapshot:
      return deleteResultText(result as SnapshotDeleteResult);
    case WorkflowType.fleetInit: {
      const layout = result as FleetLayout;
      return `fleet created: ${layout.hosts.length} hosts, ${layout.instances.length} instances, ${layout.volumes.length} volumes`;
    }
    case WorkflowType.volumeImport: {
      const r = result as VolumeImportResult;
      return `imported ${r.volumeId} for ${r.instanceId} on ${r.hostId}: ${formatBytes(r.sizeBytes)}, sha256 ${r.sha256}`;
    }
    case WorkflowType.volumeExport: {
      const r = result as VolumeExportResult;
      return `exported ${r.volumeId} from ${r.hostId} to ${r.path}: ${formatBytes(r.sizeBytes)}, sha256 ${r.sha256}`;
    }
    default:
      return JSON.stringify(result, null, 2);
  }
}

export function registerWatch(program: Command): void {
  program
    .command('status <workflowId>')
    .description('live progress of a running workflow, then its result or failure')
    .action(async (workflowId: string, _opts: unknown, command: Command) => {
      const ctx = CliContext.of(command);
      const client = await ctx.client();
      const { handle, description } = await existing(client, workflowId);
      const type = description.type;
      const running = description.status.name === 'RUNNING';
      if (running) ctx.say(`${workflowId} (${type}) is running${linkSuffix(ctx, workflowId)}`);
      try {
        const result =
          running && type === WorkflowType.liveMigration
            ? await followMigration(handle, ctx)
            : await handle.result();
        ctx.emit({ workflowId, type, status: 'COMPLETED', result });
        ctx.say(describeResult(type, result));
      } catch (err) {
        if (!isCancelled(err)) throw err;
        ctx.emit({ workflowId, type, status: 'CANCELED' });
        ctx.say(
          `${workflowId} was cancelled${type === WorkflowType.liveMigration ? ' and rolled back: the source was left untouched' : ''}`,
        );
      }
    });

  program
    .command('cancel <workflowId>')
    .description('ask a workflow to cancel; a migration rolls back before its switch and refuses after it')
    .action(async (workflowId: string, _opts: unknown, command: Command) => {
      const ctx = CliContext.of(command);
      const client = await ctx.client();
      const { handle, description } = await existing(client, workflowId);
      if (description.status.name !== 'RUNNING') {
        throw new Error(
          `${workflowId} is not running (${description.status.name.toLowerCase()}): nothing to cancel`,
        );
      }
      await ctx.requireWorker();
      await handle.cancel();
      const outcome = await awaitCancelOutcome(handle, description.type === WorkflowType.liveMigration);
      ctx.emit({ workflowId, ...outcome });
      ctx.say(outcome.message);
    });

  program
    .command('bandwidth <workflowId> <rate>')
    .description("change a running migration's copy bandwidth, e.g. 50MiB (per second; 0 = unlimited)")
    .action(async (workflowId: string, rateArg: string, _opts: unknown, command: Command) => {
      const ctx = CliContext.of(command);
      const rate = parseRate(rateArg, 'rate');
      const client = await ctx.client();
      const { handle, description } = await existing(client, workflowId);
      if (description.type !== WorkflowType.liveMigration) {
        throw new Error(`${workflowId} is a ${description.type} workflow: only migrations have a bandwidth`);
      }
      if (description.status.name !== 'RUNNING') {
        throw new Error(`${workflowId} is not running (${description.status.name.toLowerCase()})`);
      }
      await ctx.requireWorker();
      const applied = await handle.executeUpdate(setBandwidthUpdate, { args: [rate] });
      ctx.emit({ workflowId, bandwidthBytesPerSec: applied });
      ctx.say(`${workflowId}: copy bandwidth set to ${formatRate(applied)}`);
    });
}

function linkSuffix(ctx: CliContext, workflowId: string): string {
  const url = workflowUrl(ctx.target, workflowId);
  return url ? ` (${url})` : '';
}

interface CancelOutcome {
  outcome: 'rolled-back' | 'cancelled' | 'refused' | 'completed' | 'failed';
  message: string;
}

/** After a cancel request: wait until the workflow closes, or (a migration) says it refuses. */
async function awaitCancelOutcome(handle: WorkflowHandle, migration: boolean): Promise<CancelOutcome> {
  const closed = handle.result().then(
    () => ({ ok: true as const }),
    (err: unknown) => ({ ok: false as const, err }),
  );
  let last: MigrationProgress | undefined;
  if (migration) {
    let refused = false;
    await pollProgress(handle, closed, (progress) => {
      last = progress;
      refused = progress.cancelRefused;
      return refused;
    });
    if (refused && last) {
      return {
        outcome: 'refused',
        message: `refused: ${handle.workflowId} already switched ${last.instanceId} to ${last.targetHostId}; the sync continues to completion (\`rehome status ${handle.workflowId}\`)`,
      };
    }
  }
  const end = await closed;
  if (end.ok)
    return { outcome: 'completed', message: `${handle.workflowId} completed before the cancel took effect` };
  if (!isCancelled(end.err)) {
    return { outcome: 'failed', message: `${handle.workflowId} failed: ${errorLine(end.err)}` };
  }
  if (!migration) return { outcome: 'cancelled', message: `${handle.workflowId} cancelled` };
  const where = last?.sourceHostId ? `; ${last.instanceId} still runs on ${last.sourceHostId}` : '';
  return { outcome: 'rolled-back', message: `cancelled: ${handle.workflowId} rolled back${where}` };
}
