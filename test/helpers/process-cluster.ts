import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { assertId } from '../../src/contracts';
import { startDevServer, type DevServer } from '../../src/temporal/dev-server';
import { freePort } from '../../src/temporal/ports';
import { installCliRuntime, startWorkers } from '../../src/worker';

/**
 * A cluster whose workers are real processes, so a test can kill a host agent with SIGKILL: the
 * embedded Temporal dev server (on free ports, its SQLite file in the data dir, restartable in place),
 * one control-plane worker process, and one worker process per group of hosts (`npm run worker --
 * --hosts … --no-control`). Every host's data lives under the one data dir, as in production.
 *
 * A switch needs the source's and the target's agents in one process (HostAgent.switchIn reaches its
 * source through the process's own peer link), so a migration's two hosts must share a group.
 */
export interface ProcessClusterOptions {
  /** Hosts served by each worker process, e.g. [['h-1', 'h-2'], ['h-3', 'h-4']]. */
  hostGroups: string[][];
  /** Default: a fresh temp dir, removed by stop(). */
  dataDir?: string;
  /** Where each process's output goes (default `<dataDir>/../<basename>-logs`, removed with a temp data dir). */
  logDir?: string;
  /** How long a worker process may take to print its "serving" line (default 90 s: 2 cores, ts-node). */
  readyTimeoutMs?: number;
}

export interface ProcessCluster {
  dataDir: string;
  /** host:port of the dev server; the same across restartServer(). */
  address: string;
  namespace: string;
  client: Client;
  hostGroups: string[][];
  /** The worker process serving a host (and every other host of its group). */
  processOf(hostId: string): WorkerProcess;
  /** Kills the process serving `hostId` (so every host of its group) and waits until it is gone. */
  killHost(hostId: string, signal?: NodeJS.Signals): Promise<void>;
  /** Starts the process serving `hostId` again (it must be down) and waits until it serves. */
  restartHost(hostId: string): Promise<void>;
  /** Stops the dev server and starts it again on the same ports and the same SQLite file. */
  restartServer(): Promise<void>;
  /** Stops every host process gracefully (SIGTERM: workloads log their last write), for checking. */
  stopHosts(): Promise<void>;
  /** Kills everything this cluster started and removes a temp data dir. Safe to call twice. */
  stop(): Promise<void>;
}

const REPO = path.resolve(__dirname, '../..');
const WORKER_SCRIPT = path.join(REPO, 'src/worker.ts');
const LEASH = path.join(REPO, 'src/temporal/leash.cjs');
const SERVING = /rehome worker serving/;
const STOP_TIMEOUT_MS = 15_000;

export class WorkerProcess {
  private child?: ChildProcess;
  private exited?: Promise<void>;
  private readonly tail: string[] = [];
  /** Exits nobody asked for (the process failed on its own). */
  readonly unexpectedExits: string[] = [];
  private expectingExit = false;

  constructor(
    readonly name: string,
    private readonly args: string[],
    private readonly env: NodeJS.ProcessEnv,
    private readonly logFile: string,
    private readonly readyTimeoutMs: number,
  ) {}

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Spawns the process on a leash (it dies with us, even if we are SIGKILLed) and waits for "serving". */
  async start(): Promise<void> {
    if (this.running) throw new Error(`${this.name} is already running (pid ${this.pid})`);
    const log = fs.createWriteStream(this.logFile, { flags: 'a' });
    log.write(`--- ${new Date().toISOString()} start ${this.name}\n`);
    // Its own process group (detached), led by the leash: a kill of the group takes the worker with it.
    const child = spawn(process.execPath, [LEASH, process.execPath, ...this.args], {
      cwd: REPO,
      env: this.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      detached: true,
    });
    (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    this.child = child;
    this.expectingExit = false;
    this.exited = new Promise((resolve) =>
      child.once('exit', (code, signal) => {
        log.end(`--- exit ${code ?? signal}\n`);
        if (!this.expectingExit) this.unexpectedExits.push(`${this.name} exited (${code ?? signal})`);
        resolve();
      }),
    );
    let ready!: () => void;
    const serving = new Promise<void>((resolve) => (ready = resolve));
    let buffered = '';
    const onData = (chunk: Buffer) => {
      log.write(chunk);
      const text = chunk.toString('utf8');
      this.tail.push(...text.split('\n').filter((l) => l.trim() !== ''));
      this.tail.splice(0, Math.max(0, this.tail.length - 20));
      buffered = (buffered + text).slice(-4096);
      if (SERVING.test(buffered)) ready();
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${this.name} did not start serving within ${this.readyTimeoutMs} ms`)),
        this.readyTimeoutMs,
      );
    });
    const died = this.exited.then(() => {
      throw new Error(`${this.name} exited before serving: ${this.tail.slice(-3).join(' | ')}`);
    });
    try {
      await Promise.race([serving, timedOut, died]);
    } catch (err) {
      await this.kill('SIGKILL');
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * SIGKILL goes to the whole group at once (no chance to clean up: what a crash is); any other
   * signal to the leash, which passes it on and exits with the worker. Resolves once it is gone.
   */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    this.expectingExit = true;
    const killGroup = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone already
      }
    };
    if (signal === 'SIGKILL') killGroup();
    else child.kill(signal);
    const timer = setTimeout(killGroup, STOP_TIMEOUT_MS);
    await this.exited;
    clearTimeout(timer);
    // The leash exits when its worker does; make sure no worker of the group outlives it.
    killGroup();
  }

  lastOutput(): string[] {
    return [...this.tail];
  }
}

/**
 * The dev server picks random ports of its own for internal services; one can land on a port we just
 * found free. A bind failure is retried with new ports rather than failing a test on a coincidence.
 */
async function startServerOnFreePorts(
  dataDir: string,
): Promise<{ server: DevServer; port: number; uiPort: number }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const uiPort = await freePort();
    try {
      return { server: await startDevServer({ dataDir, port, uiPort }), port, uiPort };
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test((err as Error).message)) throw err;
    }
  }
}

function workerEnv(address: string, namespace: string, dataDir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  // The child finds its server the way any rehome worker does: the environment configuration.
  for (const name of Object.keys(env)) if (name.startsWith('TEMPORAL_')) delete env[name];
  env.TEMPORAL_ADDRESS = address;
  env.TEMPORAL_NAMESPACE = namespace;
  env.REHOME_DATA_DIR = dataDir;
  // Jest's own variables would make ts-node's child think it runs under a test.
  delete env.JEST_WORKER_ID;
  return env;
}

export async function startProcessCluster(opts: ProcessClusterOptions): Promise<ProcessCluster> {
  const groups = opts.hostGroups.map((g) => g.map((h) => assertId('host id', h)));
  const hostsSeen = new Set<string>();
  for (const hostId of groups.flat()) {
    if (hostsSeen.has(hostId)) throw new Error(`host ${hostId} is in two groups: one process per host`);
    hostsSeen.add(hostId);
  }
  const tempDir = opts.dataDir ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-pc-'));
  const dataDir = opts.dataDir ?? path.join(tempDir!, 'data');
  fs.mkdirSync(dataDir, { recursive: true });
  const logDir = opts.logDir ?? (tempDir ? path.join(tempDir, 'logs') : `${dataDir}-logs`);
  fs.mkdirSync(logDir, { recursive: true });
  const readyTimeoutMs = opts.readyTimeoutMs ?? 90_000;

  const first = await startServerOnFreePorts(dataDir);
  const { port, uiPort } = first;
  let server = first.server;
  const { address, namespace } = server;
  const processes: WorkerProcess[] = [];
  let connection: Connection | undefined;
  let stopped: Promise<void> | undefined;

  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      // Hosts first, gracefully; then the control plane; then the server.
      await Promise.all(processes.filter((p) => p.name !== 'control').map((p) => p.kill('SIGTERM')));
      await Promise.all(processes.map((p) => p.kill('SIGTERM')));
      await connection?.close().catch(() => undefined);
      await server.stop();
      if (tempDir) fs.rmSync(tempDir, { recursive: true, force: true });
    })());

  try {
    const env = workerEnv(address, namespace, dataDir);
    const tsNode = ['-r', 'ts-node/register/transpile-only'];
    const control = new WorkerProcess(
      'control',
      [...tsNode, __filename, '--control-worker', dataDir],
      env,
      path.join(logDir, 'control.log'),
      readyTimeoutMs,
    );
    processes.push(control);
    for (const [n, group] of groups.entries()) {
      processes.push(
        new WorkerProcess(
          `hosts-${n + 1} (${group.join(',')})`,
          [...tsNode, WORKER_SCRIPT, '--hosts', group.join(','), '--no-control', '--data-dir', dataDir],
          env,
          path.join(logDir, `hosts-${n + 1}.log`),
          readyTimeoutMs,
        ),
      );
    }
    // Started one after another: on 2 cores, parallel ts-node start-ups only slow each other down.
    for (const p of processes) await p.start();
    connection = await Connection.connect({ address });
  } catch (err) {
    await stop();
    throw err;
  }
  const client = new Client({ connection, namespace });

  const processOf = (hostId: string): WorkerProcess => {
    const n = groups.findIndex((g) => g.includes(hostId));
    if (n < 0) throw new Error(`host ${hostId} is in no group of this cluster`);
    return processes[n + 1];
  };

  return {
    dataDir,
    address,
    namespace,
    client,
    hostGroups: groups,
    processOf,
    killHost: (hostId, signal = 'SIGKILL') => processOf(hostId).kill(signal),
    async restartHost(hostId) {
      await processOf(hostId).start();
    },
    async restartServer() {
      await server.stop();
      server = await startDevServer({ dataDir, port, uiPort });
    },
    async stopHosts() {
      await Promise.all(processes.slice(1).map((p) => p.kill('SIGTERM')));
    },
    stop,
  };
}

/** The control-plane worker process: workflows and inventory activities, no host agent. */
async function controlWorkerMain(dataDir: string): Promise<void> {
  installCliRuntime();
  const address = process.env.TEMPORAL_ADDRESS!;
  const namespace = process.env.TEMPORAL_NAMESPACE ?? 'default';
  const connection = await NativeConnection.connect({ address });
  const workers = await startWorkers({
    connection,
    namespace,
    dataDir,
    hosts: [],
    control: true,
    onError: (err, queue) => {
      console.error(`control worker for ${queue} failed: ${err.message}`);
      process.exit(1);
    },
  });
  console.log(`rehome worker serving control on ${address}`);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      void workers
        .shutdown()
        .then(() => connection.close())
        .finally(() => process.exit(0));
    });
  }
}

if (require.main === module && process.argv[2] === '--control-worker') {
  controlWorkerMain(process.argv[3]).catch((err: Error) => {
    console.error(`control worker: ${err.message}`);
    process.exit(1);
  });
}
