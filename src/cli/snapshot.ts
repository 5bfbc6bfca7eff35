import fs from 'node:fs';
import { setTimeout } from 'node:timers/promises';
import type { WorkflowHandle } from '@temporalio/client';
import type { QueryDefinition } from '@temporalio/common';
import type { Command } from 'commander';
import {
  assertId,
  assertIntegerInRange,
  formatBytes,
  formatDuration,
  forbidden,
  Operation,
  snapshotProgressQuery,
  WorkflowType,
  type DeleteSnapshotInput,
  type InstanceRecord,
  type PreMigrationSnapshotInput,
  type PreMigrationSnapshotResult,
  type SnapshotDeleteResult,
  type SnapshotInfo,
  type SnapshotProgress,
} from '../contracts';
import { FileObjectStore, objectStoreRoot } from '../fleet/object-store';
import { SnapshotStore } from '../fleet/snapshot-store';
import { CliContext } from './context';
import { keyValues, table } from './format';
import { parseCount } from './sizes';
import { operationId, reportStarted, startOperation, type StartRequest } from './start';

/** The preMigrationSnapshot workflow's own bounds, checked here too so bad input never reaches it. */
const EVENT = /^[A-Za-z0-9][A-Za-z0-9:._/-]{0,199}$/;
const MAX_KEEP = 1000;
const POLL_MS = 250;

export interface SnapshotCreateOptions {
  account?: string;
  keep?: number;
  event?: string;
  wait?: boolean;
}

/** `--account`, the one flag every snapshot and restore command shares. */
export function parseAccount(value: string): string {
  return assertId('--account', value);
}

/** `--keep N`: snapshots kept per volume, this one included. */
export function parseKeep(value: string): number {
  return assertIntegerInRange('--keep', parseCount(value, '--keep'), 1, MAX_KEEP);
}

export function parseEvent(value: string): string {
  if (!EVENT.test(value)) {
    throw new Error(
      `--event ${JSON.stringify(value.slice(0, 200))} is not valid: use up to 200 letters, digits and ':._/-', e.g. "maintenance:mw-42" or "manual"`,
    );
  }
  return value;
}

/** The input of `snapshot create`, checked before anything is contacted. */
export function snapshotInput(instanceArg: string, opts: SnapshotCreateOptions): PreMigrationSnapshotInput {
  const input: PreMigrationSnapshotInput = {
    instanceId: assertId('instance id', instanceArg),
    event: opts.event === undefined ? 'manual' : parseEvent(opts.event),
  };
  if (opts.account !== undefined) input.account = parseAccount(opts.account);
  if (opts.keep !== undefined) input.keepLast = assertIntegerInRange('--keep', opts.keep, 1, MAX_KEEP);
  return input;
}

/** Workflow id of a snapshot the CLI starts: names the instance, like a migration's. */
export function snapshotWorkflowId(instanceId: string, now = Date.now()): string {
  return operationId('snapshot', [instanceId], now);
}

/** How `snapshot create` starts preMigrationSnapshot: labelled with the instance's host and account when known. */
export function snapshotRequest(
  input: PreMigrationSnapshotInput,
  instance?: Pick<InstanceRecord, 'hostId' | 'account'>,
): StartRequest {
  return {
    type: WorkflowType.preMigrationSnapshot,
    workflowId: snapshotWorkflowId(input.instanceId),
    args: [input],
    summary: `snapshot ${input.instanceId}${instance ? ` on ${instance.hostId}` : ''} (${input.event})`,
    visibility: {
      operation: Operation.preMigrationSnapshot,
      instanceId: input.instanceId,
      hostId: instance?.hostId,
      account: input.account ?? instance?.account,
      phase: 'validating',
    },
  };
}

export function deleteSnapshotRequest(input: DeleteSnapshotInput, info?: SnapshotInfo): StartRequest {
  return {
    type: WorkflowType.deleteSnapshot,
    workflowId: operationId('snapshot-delete', [input.snapshotId]),
    args: [input],
    summary: `delete snapshot ${input.snapshotId}${info ? ` of ${info.volumeId} (${info.instanceId})` : ''}`,
    visibility: {
      operation: Operation.deleteSnapshot,
      instanceId: info?.instanceId,
      account: input.account,
      phase: 'validating',
    },
  };
}

/**
 * The snapshot store in this data dir, closed (with its hashing threads) after `use`. An error, not
 * an empty store, when the data dir has none: a wrong --data-dir would otherwise list nothing.
 */
export async function withSnapshotStore<T>(ctx: CliContext, use: (store: SnapshotStore) => Promise<T>) {
  const root = objectStoreRoot(ctx.dataDir);
  if (!fs.existsSync(root)) {
    throw new Error(
      `no snapshot store in ${ctx.dataDir}: snapshots are taken with \`rehome snapshot create <instanceId>\` (or pass --data-dir)`,
    );
  }
  const store = new SnapshotStore(new FileObjectStore(root));
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

/**
 * The snapshots as this machine's store describes them, or undefined when it has no store (the
 * workers may keep it elsewhere). Only fails faster than the workflow would: wrong account, no such snapshot.
 */
export async function localSnapshots(
  ctx: CliContext,
  account: string,
  snapshotIds: string[],
): Promise<SnapshotInfo[] | undefined> {
  if (!fs.existsSync(objectStoreRoot(ctx.dataDir))) return undefined;
  return withSnapshotStore(ctx, async (store) => {
    const infos: SnapshotInfo[] = [];
    for (const id of snapshotIds) infos.push(await store.info(account, id));
    return infos;
  });
}

/**
 * Waits for a workflow to close, printing `line(progress)` each time it changes (not with --json).
 * A query that fails (workflow not started yet, worker busy) is skipped.
 */
export async function followLines<P, R>(
  handle: WorkflowHandle,
  query: QueryDefinition<P>,
  line: (progress: P) => string,
  ctx: CliContext,
): Promise<R> {
  const result = handle.result() as Promise<R>;
  let done = false;
  const settled = result.then(
    () => (done = true),
    () => (done = true),
  );
  let last = '';
  while (!done && !ctx.json) {
    const progress = await handle.query(query).catch(() => undefined);
    const text = progress === undefined ? '' : line(progress);
    if (text && text !== last) ctx.say(`${handle.workflowId}: ${text}`);
    last = text || last;
    await Promise.race([setTimeout(POLL_MS), settled]);
  }
  return await result;
}

export function snapshotProgressLine(p: SnapshotProgress): string {
  const volumes = p.volumesTotal > 0 ? ` ${p.volumesDone}/${p.volumesTotal} volumes` : '';
  return `${p.phase}${volumes}, ${formatBytes(p.bytesUploaded)} uploaded`;
}

/** What `snapshot create --wait` prints: one row per volume snapshot. */
export function snapshotResultText(r: PreMigrationSnapshotResult): string {
  if (r.snapshots.length === 0) return r.skipped ?? `no snapshot of ${r.instanceId} was taken`;
  const uploaded = r.snapshots.reduce((n, s) => n + s.bytesUploaded, 0);
  const lines = [
    `snapshot of ${r.instanceId} (${r.account}) on ${r.hostId}: ${formatBytes(uploaded)} uploaded`,
    table(
      ['snapshot', 'volume', 'size', 'uploaded', 'paused'],
      r.snapshots.map((s) => [
        s.snapshotId,
        s.volumeId,
        formatBytes(s.sizeBytes),
        formatBytes(s.bytesUploaded),
        formatDuration(s.pausedMs),
      ]),
    ),
  ];
  if (r.retired.length > 0) lines.push(`retired (older than the newest kept): ${r.retired.join(', ')}`);
  return lines.join('\n');
}

export function snapshotTable(snapshots: SnapshotInfo[]): string {
  return table(
    ['snapshot', 'instance', 'volume', 'size', 'uploaded', 'event', 'created'],
    snapshots.map((s) => [
      s.snapshotId,
      s.instanceId,
      s.volumeId,
      formatBytes(s.sizeBytes),
      formatBytes(s.bytesUploaded),
      s.sourceEvent,
      s.createdAt,
    ]),
  );
}

export function snapshotInfoText(s: SnapshotInfo): string {
  return keyValues([
    ['snapshot', s.snapshotId],
    ['account', s.account],
    ['instance', s.instanceId],
    ['volume', s.volumeId],
    ['size', formatBytes(s.sizeBytes)],
    ['block size', formatBytes(s.blockSize)],
    ['chunks', `${s.chunkCount} × ${formatBytes(s.chunkSize)} (${s.hashAlgorithm})`],
    [
      'uploaded',
      s.bytesUploaded < s.bytesTotal
        ? `${formatBytes(s.bytesUploaded)} (the rest was stored already)`
        : formatBytes(s.bytesUploaded),
    ],
    ['event', s.sourceEvent],
    ['created', s.createdAt],
  ]);
}

export function deleteResultText(r: SnapshotDeleteResult): string {
  const what = r.deleted ? `deleted ${r.snapshotId}` : `${r.snapshotId} was already deleted`;
  const gc = r.gc.skipped
    ? `; unreferenced chunks not collected yet (${r.gc.skipped})`
    : `; ${formatBytes(r.gc.bytesFreed)} of unreferenced chunks freed`;
  return what + gc;
}

export function registerSnapshot(program: Command): void {
  const snapshot = program
    .command('snapshot')
    .description("snapshots of instance-store volumes in the account's network storage");

  snapshot
    .command('create <instanceId>')
    .description('snapshot every instance-store volume of a running instance (workflow preMigrationSnapshot)')
    .option('--account <account>', 'the owning account (refused if it does not own the instance)')
    .option('--keep <n>', 'snapshots kept per volume, this one included (default 3)', parseKeep)
    .option('--event <event>', 'why: "manual" (default), "maintenance:<id>", ...')
    .option('--wait', 'show progress until done, then snapshot ids, bytes uploaded and pause per volume')
    .action(async (instanceArg: string, opts: SnapshotCreateOptions, command: Command) => {
      const ctx = CliContext.of(command);
      const input = snapshotInput(instanceArg, opts);
      // As for migrate: the inventory, when this machine has it, only lets us fail faster and label.
      const inventory = ctx.maybeInventory();
      const instance = inventory?.getInstance(input.instanceId);
      if (inventory && !instance) {
        throw new Error(
          `no instance ${JSON.stringify(input.instanceId)}: \`rehome fleet list\` shows the instances`,
        );
      }
      if (instance && input.account && instance.account !== input.account) {
        throw forbidden(
          `instance ${input.instanceId} does not belong to account ${input.account}: use the owning account`,
        );
      }
      const handle = await startOperation(ctx, snapshotRequest(input, instance));
      if (!opts.wait) {
        return reportStarted(
          ctx,
          handle,
          `snapshotting ${input.instanceId}; follow it with \`rehome status ${handle.workflowId}\``,
        );
      }
      ctx.say(`${handle.workflowId}: snapshotting ${input.instanceId}`);
      const result = await followLines<SnapshotProgress, PreMigrationSnapshotResult>(
        handle,
        snapshotProgressQuery,
        snapshotProgressLine,
        ctx,
      );
      ctx.emit({ workflowId: handle.workflowId, ...result });
      ctx.say(snapshotResultText(result));
    });

  snapshot
    .command('list')
    .description("the account's snapshots, newest first (read from this data dir's snapshot store)")
    .requiredOption('--account <account>', 'the owning account', parseAccount)
    .option('--instance <instanceId>', 'only snapshots of this instance', (v) => assertId('--instance', v))
    .option('--volume <volumeId>', 'only snapshots of this volume', (v) => assertId('--volume', v))
    .action(async (opts: { account: string; instance?: string; volume?: string }, command: Command) => {
      const ctx = CliContext.of(command);
      const snapshots = await withSnapshotStore(ctx, (store) =>
        store.list({ account: opts.account, instanceId: opts.instance, volumeId: opts.volume }),
      );
      ctx.emit(snapshots);
      if (ctx.json) return;
      if (snapshots.length === 0) return ctx.say(`no snapshots of account ${opts.account} match`);
      ctx.say(snapshotTable(snapshots));
    });

  snapshot
    .command('show <snapshotId>')
    .description('one snapshot: what it covers, its chunks, when and why it was taken')
    .requiredOption('--account <account>', 'the owning account', parseAccount)
    .action(async (idArg: string, opts: { account: string }, command: Command) => {
      const ctx = CliContext.of(command);
      const snapshotId = assertId('snapshot id', idArg);
      const info = await withSnapshotStore(ctx, (store) => store.info(opts.account, snapshotId));
      ctx.emit(info);
      ctx.say(snapshotInfoText(info));
    });

  snapshot
    .command('delete <snapshotId>')
    .description('delete a snapshot and the chunks no other snapshot uses (workflow deleteSnapshot)')
    .requiredOption('--account <account>', 'the owning account', parseAccount)
    .option('--wait', 'wait until deleted, then print the bytes freed')
    .action(async (idArg: string, opts: { account: string; wait?: boolean }, command: Command) => {
      const ctx = CliContext.of(command);
      const input: DeleteSnapshotInput = {
        account: opts.account,
        snapshotId: assertId('snapshot id', idArg),
      };
      const [info] = (await localSnapshots(ctx, input.account, [input.snapshotId])) ?? [];
      const handle = await startOperation(ctx, deleteSnapshotRequest(input, info));
      if (!opts.wait) {
        return reportStarted(
          ctx,
          handle,
          `deleting ${input.snapshotId}; follow it with \`rehome status ${handle.workflowId}\``,
        );
      }
      ctx.say(`${handle.workflowId}: deleting ${input.snapshotId}`);
      const result = (await handle.result()) as SnapshotDeleteResult;
      ctx.emit({ workflowId: handle.workflowId, ...result });
      ctx.say(deleteResultText(result));
    });
}
