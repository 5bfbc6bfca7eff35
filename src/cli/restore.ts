import type { Command } from 'commander';
import {
  assertId,
  formatBytes,
  Operation,
  restoreProgressQuery,
  WorkflowType,
  type RestoreInstanceInput,
  type RestoreInstanceResult,
  type RestoreProgress,
  type SnapshotInfo,
} from '../contracts';
import { CliContext } from './context';
import { keyValues } from './format';
import { followLines, localSnapshots, parseAccount } from './snapshot';
import { operationId, reportStarted, startOperation, type StartRequest } from './start';

/** The restoreInstance workflow takes at most this many snapshots (one per volume). */
const MAX_SNAPSHOT_IDS = 64;

interface RestoreOptions {
  account: string;
  host?: string;
  wait?: boolean;
}

/** The input of `rehome restore`, checked before anything is contacted. */
export function restoreInput(snapshotArgs: string[], opts: { account: string; host?: string }) {
  if (snapshotArgs.length > MAX_SNAPSHOT_IDS) {
    throw new Error(
      `${snapshotArgs.length} snapshot ids given: restore takes 1 to ${MAX_SNAPSHOT_IDS}, one per volume of the instance`,
    );
  }
  const snapshotIds = snapshotArgs.map((id) => assertId('snapshot id', id));
  const duplicate = snapshotIds.find((id, n) => snapshotIds.indexOf(id) !== n);
  if (duplicate) throw new Error(`snapshot ${duplicate} is given twice: give each volume's snapshot once`);
  const input: RestoreInstanceInput = { account: parseAccount(opts.account), snapshotIds };
  if (opts.host !== undefined) input.targetHostId = assertId('--host', opts.host);
  return input;
}

/** How `rehome restore` starts restoreInstance: named for the instance when this machine's store knows it. */
export function restoreRequest(input: RestoreInstanceInput, snapshots?: SnapshotInfo[]): StartRequest {
  const instanceId = snapshots?.[0]?.instanceId;
  const ids = input.snapshotIds.join(', ');
  return {
    type: WorkflowType.restoreInstance,
    workflowId: operationId('restore', [instanceId ?? input.snapshotIds[0]]),
    args: [input],
    summary: `restore ${instanceId ? `${instanceId} ` : ''}from ${ids} → ${input.targetHostId ?? 'a placed host'}`,
    visibility: {
      operation: Operation.restoreInstance,
      instanceId,
      hostId: input.targetHostId,
      account: input.account,
      phase: 'validating',
    },
  };
}

export function restoreProgressLine(p: RestoreProgress): string {
  const where = p.instanceId && p.hostId ? ` ${p.instanceId} on ${p.hostId}` : '';
  const volumes = p.volumesTotal > 0 ? [`${p.volumesDone}/${p.volumesTotal} volumes`] : [];
  return [`${p.phase}${where}`, ...volumes, `${formatBytes(p.bytesRestored)} restored`].join(', ');
}

/** Where the instance runs now, and what became of its previous copy. */
export function restoreSummary(r: RestoreInstanceResult): string {
  return keyValues([
    ['instance', `${r.instanceId} (${r.account})`],
    ['runs on', r.hostId],
    ['from', r.snapshotIds.join(', ')],
    ['bytes restored', formatBytes(r.bytesRestored)],
    [
      'previous copy',
      r.previousReleased
        ? `released on ${r.fromHostId}`
        : `not released: ${r.fromHostId} did not answer, its copy is left there`,
    ],
  ]);
}

export function registerRestore(program: Command): void {
  program
    .command('restore <snapshotId...>')
    .description(
      'start an instance from snapshots of its volumes (one per volume) on another host (workflow restoreInstance)',
    )
    .requiredOption('--account <account>', 'the owning account (only it may restore)')
    .option('--host <hostId>', 'where to restore (default: placement picks a host with room)')
    .option('--wait', 'show progress until done, then where the instance runs and bytes restored')
    .action(async (snapshotArgs: string[], opts: RestoreOptions, command: Command) => {
      const ctx = CliContext.of(command);
      const input = restoreInput(snapshotArgs, opts);
      const snapshots = await localSnapshots(ctx, input.account, input.snapshotIds);
      if (input.targetHostId) {
        const inventory = ctx.maybeInventory();
        if (inventory && !inventory.getHost(input.targetHostId)) {
          throw new Error(
            `no host ${JSON.stringify(input.targetHostId)}: \`rehome fleet list\` shows the hosts`,
          );
        }
      }
      const handle = await startOperation(ctx, restoreRequest(input, snapshots));
      const ids = input.snapshotIds.join(', ');
      if (!opts.wait) {
        return reportStarted(
          ctx,
          handle,
          `restoring from ${ids}; follow it with \`rehome status ${handle.workflowId}\``,
        );
      }
      ctx.say(`${handle.workflowId}: restoring from ${ids}`);
      const result = await followLines<RestoreProgress, RestoreInstanceResult>(
        handle,
        restoreProgressQuery,
        restoreProgressLine,
        ctx,
      );
      ctx.emit({ workflowId: handle.workflowId, ...result });
      ctx.say(restoreSummary(result));
    });
}
