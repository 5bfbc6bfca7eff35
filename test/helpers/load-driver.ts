import type { Client } from '@temporalio/client';
import {
  CONTROL_TASK_QUEUE,
  errorMessage,
  MiB,
  WorkflowType,
  type FleetLayout,
  type LiveMigrationInput,
  type WorkloadConfig,
} from '../../src/contracts';
import { checkFleet, type FleetViolation } from '../../src/fleet/fleet-check';
import { startCluster, type TestCluster } from './cluster';
import { activityIntervals, eventMs, unionMs } from './history-timing';

export interface LoadOptions {
  migrations: number;
  /** Migrations in flight at once; the rest start as earlier ones close. */
  concurrency: number;
  /** Hosts of the fleet; each migration moves an instance to the next host (default 10, at most `migrations`). */
  hosts?: number;
  /** Default 1 MiB: the load measures orchestration, not copying. */
  volumeSizeBytes?: number;
  /** Default 4 KiB/s in 4 KiB writes: instances that are alive but mostly idle. */
  workload?: WorkloadConfig;
  /**
   * Customer accounts the instances are spread over (default one per 5 instances: a fleet serves
   * many customers, and each account's snapshots are collected on their own).
   */
  accounts?: number;
  /** Take the pre-migration snapshot (default true, as liveMigration does). */
  snapshot?: boolean;
  /** A freshly started cluster without a fleet; without it the driver starts (and stops) its own. */
  cluster?: TestCluster;
  /** Called as migrations close, e.g. to print progress. */
  onProgress?: (closed: number, total: number) => void;
}

export interface MigrationTiming {
  workflowId: string;
  /** From WorkflowExecutionStarted to the close event, server time. */
  workflowMs: number;
  /** Time inside at least one activity (union of ActivityTaskStarted → close), child workflows included. */
  activityMs: number;
  /** workflowMs − activityMs: task queues, workflow tasks, child starts, timers' bookkeeping. */
  overheadMs: number;
}

export interface LoadResult {
  migrations: number;
  completed: number;
  failures: { workflowId: string; message: string }[];
  /** First start to last close, client clock. */
  wallMs: number;
  migrationsPerSec: number;
  overheadP50Ms: number;
  overheadP99Ms: number;
  overheadMaxMs: number;
  timings: MigrationTiming[];
  /** Problems the inventory reports at the end (empty when consistent). */
  inventoryProblems: string[];
  /** Reservations left behind (none when every migration cleaned up). */
  reservationsLeft: number;
  /** The fleet checker's findings at the end (empty when every invariant holds). */
  checkerViolations: FleetViolation[];
}

const DEFAULT_WORKLOAD: WorkloadConfig = { writeBytesPerSec: 4096, writeSize: 4096 };
const INSTANCES_PER_ACCOUNT = 5;
/** Histories fetched at once after the run: enough to be quick, few enough not to queue on the server. */
const HISTORY_FETCHES_IN_FLIGHT = 16;

/**
 * `runLoad({ migrations: 500, concurrency: 500 })`: a fleet with one small instance per migration,
 * every instance moved to the next host at once, then each workflow's history read back to split its
 * time into activity time and orchestration overhead.
 */
export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const cluster = opts.cluster ?? (await startCluster());
  try {
    return await drive(cluster, opts);
  } finally {
    if (!opts.cluster) await cluster.stop();
  }
}

async function drive(cluster: TestCluster, opts: LoadOptions): Promise<LoadResult> {
  const { client } = cluster;
  const snapshot = opts.snapshot ?? true;
  const hosts = Math.max(2, Math.min(opts.hosts ?? 10, opts.migrations));
  const runId = Date.now().toString(36);
  const layout: FleetLayout = await client.workflow.execute(WorkflowType.fleetInit, {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId: `load-fleet-${runId}`,
    args: [
      {
        hosts,
        instances: opts.migrations,
        volumeSizeBytes: opts.volumeSizeBytes ?? MiB,
        accounts: Array.from(
          { length: opts.accounts ?? Math.ceil(opts.migrations / INSTANCES_PER_ACCOUNT) },
          (_, n) => `acct-${n + 1}`,
        ),
        workload: opts.workload ?? DEFAULT_WORKLOAD,
      },
    ],
  });
  // The default host capacity is twice each host's share: every host can take its neighbour's
  // instances while its own are still counted, so no migration of the load is refused for room.
  const hostIds = layout.hosts.map((h) => h.hostId);
  const requests = layout.instances.map((instance) => {
    const next = hostIds[(hostIds.indexOf(instance.hostId) + 1) % hostIds.length];
    const input: LiveMigrationInput = { instanceId: instance.instanceId, targetHostId: next, snapshot };
    return { workflowId: `load-${runId}-${instance.instanceId}`, input };
  });

  const failures: LoadResult['failures'] = [];
  let completed = 0;
  let closed = 0;
  const started = performance.now();
  await inPool(requests, opts.concurrency, async ({ workflowId, input }) => {
    try {
      await client.workflow.execute(WorkflowType.liveMigration, {
        taskQueue: CONTROL_TASK_QUEUE,
        workflowId,
        args: [input],
      });
      completed += 1;
    } catch (err) {
      failures.push({ workflowId, message: errorMessage(err) });
    }
    closed += 1;
    opts.onProgress?.(closed, requests.length);
  });
  const wallMs = performance.now() - started;

  const timings = await inPoolResults(
    requests.filter((r) => !failures.some((f) => f.workflowId === r.workflowId)),
    HISTORY_FETCHES_IN_FLIGHT,
    ({ workflowId }) => migrationTiming(client, workflowId, snapshot),
  );
  const overheads = timings.map((t) => t.overheadMs).sort((a, b) => a - b);
  return {
    migrations: requests.length,
    completed,
    failures,
    wallMs,
    migrationsPerSec: completed / (wallMs / 1000),
    overheadP50Ms: percentile(overheads, 50),
    overheadP99Ms: percentile(overheads, 99),
    overheadMaxMs: overheads.length > 0 ? overheads[overheads.length - 1] : NaN,
    timings,
    inventoryProblems: cluster.workers.inventory.checkConsistency(),
    reservationsLeft: cluster.workers.inventory.listReservations().length,
    checkerViolations: await checkFleet({ dataDir: cluster.dataDir, inventory: cluster.workers.inventory }),
  };
}

/** Workflow time minus activity time, counting the pre-migration snapshot child's activities too. */
export async function migrationTiming(
  client: Client,
  workflowId: string,
  withSnapshotChild: boolean,
): Promise<MigrationTiming> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const events = history.events ?? [];
  const workflowMs = eventMs(events[events.length - 1]) - eventMs(events[0]);
  const intervals = activityIntervals(events);
  if (withSnapshotChild) {
    const child = events.find((e) => e.childWorkflowExecutionStartedEventAttributes)
      ?.childWorkflowExecutionStartedEventAttributes?.workflowExecution?.workflowId;
    if (child) {
      const childHistory = await client.workflow.getHandle(child).fetchHistory();
      intervals.push(...activityIntervals(childHistory.events ?? []));
    }
  }
  const activityMs = unionMs(intervals);
  return { workflowId, workflowMs, activityMs, overheadMs: workflowMs - activityMs };
}

/** Nearest-rank percentile of sorted values; NaN for none. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

async function inPool<T>(items: T[], limit: number, run: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await run(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
}

async function inPoolResults<T, R>(items: T[], limit: number, run: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  const indexed = items.map((item, n) => ({ item, n }));
  await inPool(indexed, limit, async ({ item, n }) => {
    results[n] = await run(item);
  });
  return results;
}
