import { Command } from 'commander';
import {
  type ActivityInterceptorsFactory,
  bundleWorkflowCode,
  DefaultLogger,
  type LogEntry,
  NativeConnection,
  Runtime,
  Worker,
  type WorkflowBundleWithSourceMap,
} from '@temporalio/worker';
import { createControlActivities } from './activities/control-activities';
import { createHostActivities } from './activities/host-activities';
import { assertId, CONTROL_TASK_QUEUE, hostTaskQueue } from './contracts';
import { FleetRuntime } from './fleet/fleet-runtime';
import { openInventory, type Inventory } from './fleet/inventory';
import { FileObjectStore, objectStoreRoot } from './fleet/object-store';
import { SnapshotStore } from './fleet/snapshot-store';
import { connectNative, dataDir as resolveDataDir, resolveTemporal } from './temporal/connection';

export interface StartWorkersOptions {
  connection: NativeConnection;
  namespace: string;
  dataDir: string;
  /** Serve only these hosts; without it, every host in the inventory, including hosts added later. */
  hosts?: string[];
  /** Run the control-plane worker (workflows + inventory activities); default true. */
  control?: boolean;
  workflowBundle?: WorkflowBundleWithSourceMap;
  /** How often to look for hosts added to the inventory (default 500 ms). */
  pollIntervalMs?: number;
  /** A worker stopped on its own (not through shutdown()); default: print it. */
  onError?: (err: Error, taskQueue: string) => void;
  /** Activity interceptors for a host's worker (tests use them to inject failures with real parts). */
  hostActivityInterceptors?: (hostId: string) => ActivityInterceptorsFactory[];
  /** Period of the simulated guests' write loops (default 5 ms: see Workload). */
  workloadTickMs?: number;
}

export interface RunningWorkers {
  /** The host agents this process runs (tests reach into them, e.g. to pause a workload). */
  fleet: FleetRuntime;
  inventory: Inventory;
  /** The snapshot store (`<dataDir>/object-store`) every worker of this process shares. */
  snapshots: SnapshotStore;
  /** Host ids served right now. */
  hosts(): string[];
  /**
   * Stops one host's worker and closes its agent, as if the host died: nobody polls its queue any
   * more and it is not served again (host discovery skips it). Its data stays on disk.
   */
  stopHost(hostId: string): Promise<void>;
  /** Stops every worker, then closes the host runtime, the snapshot store and the inventory. Safe to call twice. */
  shutdown(): Promise<void>;
}

const quiet = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

let sharedBundle: Promise<WorkflowBundleWithSourceMap> | undefined;

/** The workflow code, bundled once per process and shared by every control worker started in it. */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  sharedBundle ??= bundleWorkflowCode({ workflowsPath: require.resolve('./workflows'), logger: quiet });
  return sharedBundle;
}

/**
 * For long-running commands (worker script, `rehome up`, the demo): SDK logs at WARN and no signal
 * handlers of its own, so the caller decides the shutdown order (workers first, then the server).
 */
export function installCliRuntime(): void {
  try {
    Runtime.install({ logger: new DefaultLogger('WARN', compactLog), shutdownSignals: [] });
  } catch {
    // Already installed (or already instantiated by an earlier connection): keep it.
  }
}

/**
 * One line per SDK log entry: which workflow or activity, and the error's own message. The stack
 * traces of expected failures (bad input) are noise in a console; the Web UI has the details.
 */
function compactLog(entry: LogEntry): void {
  // Host workers serve activities only: that they do not poll for workflow tasks is the point.
  if (entry.message.startsWith('No workflows registered')) return;
  const meta = entry.meta ?? {};
  const where = [meta.workflowType, meta.workflowId, meta.activityType].filter(Boolean).join(' ');
  const error = meta.error instanceof Error ? `: ${meta.error.message.split('\n')[0]}` : '';
  const time = new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString();
  console.error(`${time} [${entry.level}] ${entry.message}${where ? ` (${where})` : ''}${error}`);
}

interface Served {
  worker: Worker;
  running: Promise<void>;
}

export async function startWorkers(options: StartWorkersOptions): Promise<RunningWorkers> {
  const { connection, namespace, dataDir } = options;
  const fixedHosts = options.hosts?.map((h) => assertId('host id', h));
  const onError =
    options.onError ?? ((err, queue) => console.error(`rehome: worker for ${queue} stopped: ${err.message}`));
  const inventory = openInventory(dataDir);
  const fleet = new FleetRuntime({
    dataDir,
    placedElsewhere: (instanceId, hostId) => inventory.placedElsewhere(instanceId, hostId),
    workloadTickMs: options.workloadTickMs,
  });
  // One per process: its hashing workers and chunk index serve every host and the control plane.
  const snapshots = new SnapshotStore(new FileObjectStore(objectStoreRoot(dataDir)));
  const served = new Map<string, Served>();
  const stoppedHosts = new Set<string>();
  let closing = false;

  const run = (queue: string, worker: Worker): Served => {
    const running = worker.run().catch((err: Error) => {
      if (!closing) onError(err, queue);
    });
    return { worker, running };
  };

  const serveHost = async (hostId: string): Promise<void> => {
    const agent = await fleet.host(hostId);
    snapshots.startHashing(); // a host's snapshots hash: ready before the first one
    const interceptors = options.hostActivityInterceptors?.(hostId);
    const worker = await Worker.create({
      connection,
      namespace,
      taskQueue: hostTaskQueue(hostId),
      activities: createHostActivities(agent, snapshots),
      interceptors: interceptors && { activity: interceptors },
    });
    served.set(hostTaskQueue(hostId), run(hostTaskQueue(hostId), worker));
  };

  const servedHosts = () =>
    [...served.keys()].filter((q) => q !== CONTROL_TASK_QUEUE).map((q) => q.slice(hostTaskQueue('').length));

  const addNewHosts = async (): Promise<void> => {
    const wanted = fixedHosts ?? inventory.listHosts().map((h) => h.hostId);
    for (const hostId of wanted) {
      if (closing) return;
      if (!served.has(hostTaskQueue(hostId)) && !stoppedHosts.has(hostId)) await serveHost(hostId);
    }
  };

  let timer: NodeJS.Timeout | undefined;
  let tick: Promise<void> = Promise.resolve();
  try {
    if (options.control ?? true) {
      const worker = await Worker.create({
        connection,
        namespace,
        taskQueue: CONTROL_TASK_QUEUE,
        workflowBundle: options.workflowBundle ?? (await workflowBundle()),
        activities: createControlActivities(inventory, snapshots),
      });
      served.set(CONTROL_TASK_QUEUE, run(CONTROL_TASK_QUEUE, worker));
    }
    await addNewHosts();
    if (!fixedHosts) {
      // fleetInit adds hosts while we run: their agents must come up without a restart.
      let busy = false;
      let lastError = '';
      timer = setInterval(() => {
        if (busy || closing) return;
        busy = true;
        tick = addNewHosts()
          .then(() => {
            lastError = '';
          })
          .catch((err: Error) => {
            // Retried every tick; say it once, not twice a second.
            if (err.message !== lastError) onError(err, 'host discovery');
            lastError = err.message;
          })
          .finally(() => {
            busy = false;
          });
      }, options.pollIntervalMs ?? 500);
    }
  } catch (err) {
    closing = true;
    await stopAll();
    throw err;
  }

  async function stopAll(): Promise<void> {
    if (timer) clearInterval(timer);
    await tick;
    for (const { worker } of served.values()) {
      try {
        worker.shutdown();
      } catch {
        // Not running any more (it failed on its own): nothing to stop.
      }
    }
    await Promise.all([...served.values()].map((s) => s.running));
    await fleet.close();
    await snapshots.close();
    inventory.close();
  }

  let stopped: Promise<void> | undefined;
  return {
    fleet,
    inventory,
    snapshots,
    hosts: servedHosts,
    async stopHost(hostId) {
      const queue = hostTaskQueue(assertId('host id', hostId));
      stoppedHosts.add(hostId);
      // A discovery tick may be starting this host's worker right now: let it finish first.
      await tick;
      const host = served.get(queue);
      served.delete(queue);
      if (host) {
        try {
          host.worker.shutdown();
        } catch {
          // Not running any more: nothing to stop.
        }
        await host.running;
      }
      await fleet.localAgent(hostId)?.close();
    },
    shutdown() {
      closing = true;
      stopped ??= stopAll();
      return stopped;
    },
  };
}

/** `npm run worker -- [--hosts h-1,h-2] [--no-control] [--data-dir dir]`: serve until SIGINT/SIGTERM. */
async function main(argv: string[]): Promise<void> {
  const opts = new Command('rehome-worker')
    .description('serve rehome task queues: the control plane and simulated hosts')
    .option('--hosts <ids>', 'comma-separated host ids to serve (default: every host in the inventory)')
    .option('--no-control', 'do not serve the control-plane queue (workflows and inventory activities)')
    .option('--data-dir <dir>', 'data directory (default $REHOME_DATA_DIR or ./.rehome)')
    .parse(argv)
    .opts<{ hosts?: string; control: boolean; dataDir?: string }>();
  installCliRuntime();
  const dir = resolveDataDir(opts.dataDir);
  const target = resolveTemporal({ dataDir: dir });
  const connection = await connectNative(target);
  // Filled in once started; a worker can fail (and call stop) while the others are still starting.
  const started: { workers?: RunningWorkers } = {};
  let stopping: Promise<void> | undefined;
  const stop = (code: number) => {
    stopping ??= (async () => {
      await started.workers?.shutdown();
      await connection.close();
      process.exit(code);
    })();
  };
  const workers = await startWorkers({
    connection,
    namespace: target.namespace,
    dataDir: dir,
    hosts: opts.hosts?.split(',').map((h) => h.trim()),
    control: opts.control,
    onError: (err, queue) => {
      console.error(`rehome: worker for ${queue} failed: ${err.message}`);
      stop(1);
    },
  });
  started.workers = workers;
  const what = [opts.control ? 'control' : undefined, ...(opts.hosts ? workers.hosts() : ['every host'])];
  console.log(
    `rehome worker serving ${what.filter(Boolean).join(', ')} on ${target.address} (Ctrl-C to stop)`,
  );
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => stop(0));
}

if (require.main === module) {
  main(process.argv).catch((err: Error) => {
    console.error(`rehome: ${err.message.split('\n')[0]}`);
    process.exit(1);
  });
}
