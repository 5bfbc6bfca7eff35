import { Client } from '@temporalio/client';
import type { NativeConnection } from '@temporalio/worker';
import { connectNative, resolveTemporal, withServer, type TemporalTarget } from '../temporal/connection';
import { startDevServer, type DevServer } from '../temporal/dev-server';
import { installCliRuntime, startWorkers, type RunningWorkers } from '../worker';
import { Interrupted } from './errors';

export interface StackOptions {
  dataDir: string;
  ip?: string;
  port?: number;
  uiPort?: number;
}

/** A Temporal to talk to (embedded unless the environment names one) with rehome's workers on it. */
export interface Stack {
  target: TemporalTarget;
  /** Set when this process started the dev server. */
  server?: DevServer;
  connection: NativeConnection;
  client: Client;
  workers: RunningWorkers;
  /** Workers first (they finish their tasks), then the connection, then the server. */
  stop(): Promise<void>;
}

export async function startStack(options: StackOptions): Promise<Stack> {
  installCliRuntime();
  let target = resolveTemporal({ dataDir: options.dataDir });
  const cleanup: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const step of cleanup.splice(0).reverse()) await step();
  };
  try {
    let server: DevServer | undefined;
    if (target.embedded) {
      server = await startDevServer({
        dataDir: options.dataDir,
        ip: options.ip ?? target.ip,
        port: options.port ?? target.port,
        uiPort: options.uiPort ?? target.uiPort,
        namespace: target.namespace,
      });
      cleanup.push(() => server!.stop());
      target = withServer(target, server);
    }
    const connection = await connectNative(target);
    cleanup.push(() => connection.close());
    const client = new Client({ connection, namespace: target.namespace });
    const workers = await startWorkers({ connection, namespace: target.namespace, dataDir: options.dataDir });
    cleanup.push(() => workers.shutdown());
    return { target, server, connection, client, workers, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Takes over Ctrl-C, SIGTERM and SIGHUP for a long-running command: the first one resolves `signalled` (the
 * caller stops workers, then the server); a second one exits at once (the 'exit' hook still kills a
 * dev server we started). Install it before starting anything, so an early Ctrl-C orphans nothing.
 */
export function shutdownSignals(): { signalled: Promise<NodeJS.Signals>; dispose(): void } {
  let received = false;
  let resolve!: (signal: NodeJS.Signals) => void;
  const signalled = new Promise<NodeJS.Signals>((r) => (resolve = r));
  const onSignal = (signal: NodeJS.Signals) => {
    if (received) process.exit(130);
    received = true;
    resolve(signal);
  };
  // SIGHUP too: a closed terminal must not orphan the dev server (it runs in its own process group).
  const names: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const name of names) process.on(name, onSignal);
  return {
    signalled,
    dispose() {
      for (const name of names) process.removeListener(name, onSignal);
    },
  };
}

/** Runs `step` unless a shutdown signal arrives first (then rejects with Interrupted). */
export async function unlessSignalled<T>(signalled: Promise<NodeJS.Signals>, step: Promise<T>): Promise<T> {
  return Promise.race([
    step,
    signalled.then((signal) => {
      throw new Interrupted(signal);
    }),
  ]);
}

/**
 * Starts the stack; if a signal arrives while it starts, waits for the start to settle and stops
 * whatever came up, so nothing is left behind.
 */
export async function startStackUnlessSignalled(
  options: StackOptions,
  signalled: Promise<NodeJS.Signals>,
): Promise<Stack> {
  const starting = startStack(options);
  try {
    return await unlessSignalled(signalled, starting);
  } catch (err) {
    if (err instanceof Interrupted) await starting.then((stack) => stack.stop()).catch(() => undefined);
    throw err;
  }
}
