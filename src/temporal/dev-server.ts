import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Connection } from '@temporalio/client';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { SEARCH_ATTRIBUTES } from '../contracts';
import { processAlive, removeTemps, writeFileAtomicSync } from '../fleet/atomic-file';
import { temporalCliPath } from './binaries';
import { isPortOpen } from './ports';

export interface DevServerOptions {
  /** The SQLite file (temporal.db), the log and the state file live here. */
  dataDir: string;
  ip?: string;
  port?: number;
  uiPort?: number;
  namespace?: string;
}

export interface DevServer {
  /** host:port of the frontend gRPC service. */
  address: string;
  uiUrl: string;
  namespace: string;
  /** Where the server's own output goes. */
  logFile: string;
  stop(): Promise<void>;
}

/** Written next to temporal.db while a server runs, so a second start on the same data finds it. */
export interface DevServerState {
  pid: number;
  address: string;
  uiUrl: string;
  namespace: string;
  startedAt: string;
}

const STATE_FILE = 'temporal-server.json';
const LOG_FILE = 'temporal-server.log';
const TAIL_LINES = 20;
/** How long to wait for the server to answer before giving up. */
const START_TIMEOUT_MS = 60_000;
/** How long stop() waits after SIGTERM before SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;

export function serverStatePath(dataDir: string): string {
  return path.join(dataDir, STATE_FILE);
}

/** The dev server rehome started for this data dir, if its process is still alive. */
export function readServerState(dataDir: string): DevServerState | undefined {
  try {
    const state = JSON.parse(fs.readFileSync(serverStatePath(dataDir), 'utf8')) as DevServerState;
    return typeof state.pid === 'number' && processAlive(state.pid) ? state : undefined;
  } catch {
    return undefined;
  }
}

function hostForUrl(ip: string): string {
  // 0.0.0.0 is not an address a browser can open; the server is reachable on loopback.
  if (ip === '0.0.0.0') return '127.0.0.1';
  return ip.includes(':') ? `[${ip}]` : ip;
}

async function answersAsTemporal(address: string): Promise<boolean> {
  try {
    const connection = await Connection.connect({ address, connectTimeout: '2s' });
    await connection.close();
    return true;
  } catch {
    return false;
  }
}

async function assertPortsFree(ip: string, port: number, uiPort: number): Promise<void> {
  const host = hostForUrl(ip).replace(/^\[|\]$/g, '');
  if (await isPortOpen(host, port)) {
    const address = `${host}:${port}`;
    if (await answersAsTemporal(address)) {
      throw new Error(
        `port ${port} is already used by another Temporal server at ${address}: stop it, or use it with TEMPORAL_ADDRESS=${address}`,
      );
    }
    throw new Error(`port ${port} on ${host} is in use by another program: free it or choose another port`);
  }
  if (await isPortOpen(host, uiPort)) {
    throw new Error(
      `Web UI port ${uiPort} on ${host} is in use by another program: free it or choose another port`,
    );
  }
}

function devServerArgs(
  dbFile: string,
  ip: string,
  port: number,
  uiPort: number,
  namespace: string,
): string[] {
  const args = ['server', 'start-dev', '--db-filename', dbFile, '--ip', ip, '--port', String(port)];
  args.push('--ui-port', String(uiPort), '--namespace', namespace, '--log-level', 'warn');
  // WAL with synchronous=normal survives a killed server process (what the fault tests do) and takes
  // about a third off every orchestration round trip compared with an fsync per transaction.
  args.push('--sqlite-pragma', 'journal_mode=wal', '--sqlite-pragma', 'synchronous=normal');
  for (const [name, type] of Object.entries(SEARCH_ATTRIBUTES))
    args.push('--search-attribute', `${name}=${type}`);
  return args;
}

/** Keeps the last lines a process printed, for an error message when it dies. */
class Tail {
  private lines: string[] = [];
  private partial = '';
  push(chunk: Buffer): void {
    const parts = (this.partial + chunk.toString('utf8')).split('\n');
    this.partial = parts.pop() ?? '';
    this.lines.push(...parts.filter((l) => l.trim() !== ''));
    if (this.lines.length > TAIL_LINES) this.lines = this.lines.slice(-TAIL_LINES);
  }
  last(): string[] {
    return this.partial.trim() ? [...this.lines, this.partial] : [...this.lines];
  }
}

function exitPromise(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function waitReady(
  child: ChildProcess,
  tail: Tail,
  address: string,
  namespace: string,
  timeoutMs: number,
  logFile: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = 'no answer';
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const why = tail.last().slice(-1)[0] ?? 'no output';
      throw new Error(
        `the Temporal dev server exited (${child.exitCode ?? child.signalCode}) before it was ready: ${why} (see ${logFile})`,
      );
    }
    try {
      const connection = await Connection.connect({ address, connectTimeout: '1s' });
      try {
        // The frontend can answer before the namespace exists; wait for both.
        await connection.workflowService.describeNamespace({ namespace });
        return;
      } finally {
        await connection.close();
      }
    } catch (err) {
      lastError = (err as Error).message;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `the Temporal dev server did not answer at ${address} within ${Math.round(timeoutMs / 1000)} s (${lastError}; see ${logFile})`,
      );
    }
    await sleep(200);
  }
}

const LEASH = path.join(__dirname, 'leash.cjs');

/**
 * Starts `temporal server start-dev` on a SQLite file under dataDir, with rehome's search attributes
 * registered, and resolves once it answers. State survives a restart on the same dataDir.
 */
export async function startDevServer(options: DevServerOptions): Promise<DevServer> {
  const dataDir = path.resolve(options.dataDir);
  const ip = options.ip ?? '127.0.0.1';
  const port = options.port ?? 7233;
  const uiPort = options.uiPort ?? 8233;
  const namespace = options.namespace ?? 'default';
  const address = `${hostForUrl(ip)}:${port}`;
  const uiUrl = `http://${hostForUrl(ip)}:${uiPort}`;
  fs.mkdirSync(dataDir, { recursive: true });

  const running = readServerState(dataDir);
  if (running) {
    throw new Error(
      `a Temporal dev server (pid ${running.pid}) already runs on ${path.join(dataDir, 'temporal.db')} at ${running.address}: stop it first (Ctrl-C where it runs) or use another data dir`,
    );
  }
  await assertPortsFree(ip, port, uiPort);
  await removeTemps(dataDir, (name) => name === STATE_FILE);

  const cli = temporalCliPath();
  if (!cli) return startWithSdkDownload(dataDir, ip, port, uiPort, namespace);

  const logFile = path.join(dataDir, LOG_FILE);
  const log = fs.createWriteStream(logFile, { flags: 'a' });
  const tail = new Tail();
  // Own process group: a Ctrl-C in the terminal reaches us, and we stop the server after the workers.
  // On a leash: if this process dies without stop(), even by SIGKILL, the server goes with it.
  const serverArgs = devServerArgs(path.join(dataDir, 'temporal.db'), ip, port, uiPort, namespace);
  const child = spawn(process.execPath, [LEASH, cli, ...serverArgs], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  // The pipe is the leash: hold it open, but do not let it keep this process alive.
  (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  const exited = exitPromise(child);
  for (const stream of [child.stdout, child.stderr]) {
    stream?.on('data', (chunk: Buffer) => {
      tail.push(chunk);
      log.write(chunk);
    });
  }
  const spawnFailed = new Promise<never>((_, reject) =>
    child.once('error', (err) => reject(new Error(`cannot run ${cli}: ${err.message}`))),
  );
  // If this process exits without stop() (an uncaught error), do not leave the server behind.
  // The leash leads its own process group with the server in it: a hard kill must reach both, or the
  // server would outlive a leash that was killed first.
  const killGroup = () => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  };
  const killOnExit = killGroup;
  process.once('exit', killOnExit);

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      process.removeListener('exit', killOnExit);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(killGroup, STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
      const state = readServerState(dataDir);
      if (!state || state.pid === child.pid) fs.rmSync(serverStatePath(dataDir), { force: true });
      await new Promise<void>((resolve) => log.end(resolve));
    })();
    return stopped;
  };

  try {
    await Promise.race([waitReady(child, tail, address, namespace, START_TIMEOUT_MS, logFile), spawnFailed]);
  } catch (err) {
    await stop();
    throw err;
  }
  const state: DevServerState = {
    pid: child.pid!,
    address,
    uiUrl,
    namespace,
    startedAt: new Date().toISOString(),
  };
  // Atomic, so a second start never reads a torn state file and takes the server for gone.
  writeFileAtomicSync(serverStatePath(dataDir), JSON.stringify(state, null, 2));
  return { address, uiUrl, namespace, logFile, stop };
}

/** No CLI installed: the SDK downloads one (needs internet) and runs it the same way. */
async function startWithSdkDownload(
  dataDir: string,
  ip: string,
  port: number,
  uiPort: number,
  namespace: string,
): Promise<DevServer> {
  const { TestWorkflowEnvironment } = await import('@temporalio/testing');
  const searchAttributes = Object.keys(SEARCH_ATTRIBUTES).map((name) =>
    defineSearchAttributeKey(name, SearchAttributeType.KEYWORD),
  );
  const env = await TestWorkflowEnvironment.createLocal({
    server: { dbFilename: path.join(dataDir, 'temporal.db'), ip, port, uiPort, namespace, searchAttributes },
  });
  let stopped: Promise<void> | undefined;
  return {
    address: `${hostForUrl(ip)}:${port}`,
    uiUrl: `http://${hostForUrl(ip)}:${uiPort}`,
    namespace,
    logFile: '(managed by the Temporal SDK)',
    stop: () => (stopped ??= env.teardown()),
  };
}
