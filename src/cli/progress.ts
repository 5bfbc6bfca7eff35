import { SingleBar } from 'cli-progress';
import type { WorkflowHandle } from '@temporalio/client';
import { setTimeout } from 'node:timers/promises';
import {
  formatBytes,
  formatDuration,
  formatRate,
  progressQuery,
  type LiveMigrationResult,
  type MigrationProgress,
} from '../contracts';
import { keyValues } from './format';

const POLL_MS = 250;

/**
 * Reads a migration's `progress` query every POLL_MS until `closed` settles (the workflow ended) or
 * `onProgress` returns true. A query that fails (workflow not started yet, worker busy) is skipped.
 */
export async function pollProgress(
  handle: WorkflowHandle,
  closed: Promise<unknown>,
  onProgress: (progress: MigrationProgress) => boolean | void,
): Promise<void> {
  let done = false;
  const settled = closed.then(
    () => (done = true),
    () => (done = true),
  );
  while (!done) {
    const progress = await handle.query(progressQuery).catch(() => undefined);
    if (progress && onProgress(progress)) return;
    await Promise.race([setTimeout(POLL_MS), settled]);
  }
}

function eta(seconds: number | null): string {
  return seconds === null ? '-' : formatDuration(seconds * 1000);
}

/**
 * Waits for a live migration to close, showing its `progress` query as a bar (on a terminal) or one
 * line per phase (in a log). Resolves with the result; rejects as handle.result() does.
 */
export async function followMigration(
  handle: WorkflowHandle,
  out: { json: boolean; say(line: string): void },
): Promise<LiveMigrationResult> {
  const result = handle.result() as Promise<LiveMigrationResult>;
  const tty = !out.json && process.stdout.isTTY === true;
  const bar = tty
    ? new SingleBar({
        format: '{phase} |{bar}| {percentage}% {moved}/{size} | {rate} | limit {limit} | eta {left}',
        barsize: 30,
        hideCursor: true,
        clearOnComplete: false,
      })
    : undefined;
  let lastPhase = '';
  try {
    bar?.start(1, 0, { phase: 'starting', moved: '0 B', size: '?', rate: '-', limit: '-', left: '-' });
    await pollProgress(handle, result, (progress) => {
      if (bar) render(bar, progress);
      else if (!out.json && progress.phase !== lastPhase)
        out.say(`${handle.workflowId}: ${phaseLine(progress)}`);
      lastPhase = progress.phase;
    });
  } finally {
    bar?.stop();
  }
  return await result;
}

function render(bar: SingleBar, p: MigrationProgress): void {
  const total = Math.max(1, p.blocksTotal);
  bar.setTotal(total);
  const fraction = p.blocksTotal > 0 ? p.blocksDone / p.blocksTotal : 0;
  bar.update(p.blocksTotal > 0 ? p.blocksDone : 0, {
    phase: p.phase.padEnd(13),
    moved: formatBytes(Math.round(fraction * p.bytesTotal)),
    size: formatBytes(p.bytesTotal),
    rate: p.rateBytesPerSec > 0 ? formatRate(p.rateBytesPerSec) : '-',
    limit: formatRate(p.bandwidthBytesPerSec),
    left: eta(p.etaSeconds),
  });
}

export function phaseLine(p: MigrationProgress): string {
  const pct = p.blocksTotal > 0 ? ` ${Math.floor((100 * p.blocksDone) / p.blocksTotal)}%` : '';
  return `${p.phase}${pct}${p.cancelRefused ? ' (cancel refused: already switched)' : ''}`;
}

/** The numbers an operator asks after a migration. */
export function migrationSummary(r: LiveMigrationResult): string {
  return keyValues([
    ['instance', `${r.instanceId} (${r.account})`],
    ['moved', `${r.sourceHostId} → ${r.targetHostId}`],
    ['downtime', formatDuration(r.downtimeMs)],
    [
      'bytes moved',
      `${formatBytes(r.bytesCopied + r.bytesReadThrough)} (${formatBytes(r.bytesCopied)} copied, ${formatBytes(r.bytesReadThrough)} read through)`,
    ],
    ['duration', formatDuration(r.durationMs)],
    ['blocks verified', r.blocksVerified],
    ['blocks written during sync', r.blocksWrittenOnTarget],
    ...(r.phaseMs?.snapshotting !== undefined
      ? [
          [
            'pre-migration snapshot',
            `${formatDuration(r.phaseMs.snapshotting)}, ${r.snapshotIds ? `kept: ${r.snapshotIds.join(', ')}` : 'deleted after the commit'}`,
          ] as [string, string],
        ]
      : []),
    ...(r.bytesRecopied
      ? [
          ['copied twice', `${formatBytes(r.bytesRecopied)} (a copy interrupted and resumed)`] as [
            string,
            string,
          ],
        ]
      : []),
    ...(r.sourceReleased === false
      ? [
          [
            'source',
            `${r.sourceHostId} never answered its release: delete its stale copy of ${r.instanceId} if it returns`,
          ] as [string, string],
        ]
      : []),
    ...(r.cancelRefused ? [['cancel', 'refused: it arrived after the switch'] as [string, string]] : []),
  ]);
}
