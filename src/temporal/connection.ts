import path from 'node:path';
import { Client, Connection, type ConnectionOptions } from '@temporalio/client';
import { loadClientConfigProfile, loadClientConnectConfig } from '@temporalio/envconfig';
import { NativeConnection, type NativeConnectionOptions } from '@temporalio/worker';
import { readServerState } from './dev-server';

/** Where rehome's Temporal is: a cluster from the environment, or the embedded dev server. */
export interface TemporalTarget {
  /** True when rehome runs (or would run) the dev server itself. */
  embedded: boolean;
  address: string;
  namespace: string;
  /** Web UI base URL, when known. */
  uiUrl?: string;
  /** For the embedded server: what to start. */
  ip: string;
  port: number;
  uiPort: number;
  connectionOptions: NativeConnectionOptions;
}

export const DEFAULT_PORT = 7233;
export const DEFAULT_UI_PORT = 8233;

/** --data-dir, else REHOME_DATA_DIR, else ./.rehome; always absolute. */
export function dataDir(flag?: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(flag ?? env.REHOME_DATA_DIR ?? path.join(process.cwd(), '.rehome'));
}

function guessUiUrl(address: string, env: NodeJS.ProcessEnv): string | undefined {
  if (env.REHOME_TEMPORAL_UI_URL) return env.REHOME_TEMPORAL_UI_URL.replace(/\/+$/, '');
  if (/\.tmprl\.cloud(:\d+)?$/.test(address)) return 'https://cloud.temporal.io';
  const local = /^(localhost|127\.0\.0\.1):(\d+)$/.exec(address);
  // A local dev server serves its UI on the gRPC port + 1000 unless told otherwise.
  return local ? `http://${local[1]}:${Number(local[2]) + 1000}` : undefined;
}

/**
 * TEMPORAL_ADDRESS, TEMPORAL_PROFILE or a Temporal config file (the environment configuration
 * conventions, via @temporalio/envconfig) name a server: use it and start nothing. Otherwise rehome
 * uses its embedded dev server: the one already running for this data dir, or 127.0.0.1:7233.
 */
export function resolveTemporal(options: { dataDir?: string; env?: NodeJS.ProcessEnv } = {}): TemporalTarget {
  const env = options.env ?? process.env;
  const profile = loadClientConfigProfile({ overrideEnvVars: env as Record<string, string> });
  if (profile.address) {
    const { connectionOptions, namespace } = loadClientConnectConfig({
      overrideEnvVars: env as Record<string, string>,
    });
    const address = profile.address;
    const [host, port] = address.split(/:(?=\d+$)/);
    return {
      embedded: false,
      address,
      namespace: namespace ?? 'default',
      uiUrl: guessUiUrl(address, env),
      ip: host,
      port: Number(port ?? DEFAULT_PORT),
      uiPort: Number(port ?? DEFAULT_PORT) + 1000,
      connectionOptions,
    };
  }
  const namespace = profile.namespace ?? 'default';
  const running = options.dataDir ? readServerState(options.dataDir) : undefined;
  if (running) {
    const [ip, port] = running.address.split(/:(?=\d+$)/);
    const uiPort = Number(/:(\d+)$/.exec(running.uiUrl)?.[1] ?? DEFAULT_UI_PORT);
    return {
      embedded: true,
      address: running.address,
      namespace: running.namespace,
      uiUrl: running.uiUrl,
      ip,
      port: Number(port),
      uiPort,
      connectionOptions: { address: running.address },
    };
  }
  const address = `127.0.0.1:${DEFAULT_PORT}`;
  return {
    embedded: true,
    address,
    namespace,
    uiUrl: `http://127.0.0.1:${DEFAULT_UI_PORT}`,
    ip: '127.0.0.1',
    port: DEFAULT_PORT,
    uiPort: DEFAULT_UI_PORT,
    connectionOptions: { address },
  };
}

/** The same target, pointing at a dev server that was just started (possibly on other ports). */
export function withServer(
  target: TemporalTarget,
  server: { address: string; uiUrl: string; namespace: string },
): TemporalTarget {
  return {
    ...target,
    address: server.address,
    uiUrl: server.uiUrl,
    namespace: server.namespace,
    connectionOptions: { ...target.connectionOptions, address: server.address },
  };
}

function unreachable(target: TemporalTarget, err: unknown): Error {
  if (target.embedded) {
    return new Error(
      `no Temporal server at ${target.address}: start one with \`npx rehome up\` (or \`npm run demo\`), or set TEMPORAL_ADDRESS`,
    );
  }
  const why = ((err as Error)?.message ?? String(err)).split('\n')[0];
  return new Error(
    `cannot reach Temporal at ${target.address} (from TEMPORAL_ADDRESS or the Temporal config): ${why}`,
  );
}

/** A Client for the target (default: as resolved for the default data dir), or one clear error line when nothing answers. */
export async function connectClient(
  target: TemporalTarget = resolveTemporal({ dataDir: dataDir() }),
): Promise<Client> {
  const { address, tls, apiKey, metadata } = target.connectionOptions;
  let connection: Connection;
  try {
    connection = await Connection.connect({
      address,
      tls: tls as ConnectionOptions['tls'],
      apiKey: apiKey as ConnectionOptions['apiKey'],
      metadata,
      connectTimeout: '3s',
    });
  } catch (err) {
    throw unreachable(target, err);
  }
  return new Client({ connection, namespace: target.namespace });
}

/** A worker-side (native) connection; it can also back a Client. */
export async function connectNative(
  target: TemporalTarget = resolveTemporal({ dataDir: dataDir() }),
): Promise<NativeConnection> {
  try {
    return await NativeConnection.connect(target.connectionOptions);
  } catch (err) {
    throw unreachable(target, err);
  }
}

/** Web UI page of one workflow, when the UI address is known. */
export function workflowUrl(target: TemporalTarget, workflowId: string): string | undefined {
  if (!target.uiUrl) return undefined;
  return `${target.uiUrl}/namespaces/${encodeURIComponent(target.namespace)}/workflows/${encodeURIComponent(workflowId)}`;
}

/** Web UI workflow list filtered by a visibility query, e.g. InstanceId = "i-3". */
export function workflowListUrl(target: TemporalTarget, query: string): string | undefined {
  if (!target.uiUrl) return undefined;
  return `${target.uiUrl}/namespaces/${encodeURIComponent(target.namespace)}/workflows?query=${encodeURIComponent(query)}`;
}
