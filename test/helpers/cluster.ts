import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startDevServer, type DevServer } from '../../src/temporal/dev-server';
import { freePort } from '../../src/temporal/ports';
import { startWorkers, type RunningWorkers, type StartWorkersOptions } from '../../src/worker';

/**
 * A real embedded Temporal dev server on free ports, real workers (control + every host agent) in this
 * process, and a temp data dir: what the integration tests, the history recorder and the benches run on.
 */
export interface TestCluster {
  dataDir: string;
  server: DevServer;
  client: Client;
  workers: RunningWorkers;
  stop(): Promise<void>;
}

/**
 * The dev server picks random ports of its own for internal services; one can land on a port we just
 * found free. A bind failure is retried with new ports rather than failing a test on a coincidence.
 */
async function startServerOnFreePorts(dataDir: string): Promise<DevServer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDevServer({ dataDir, port: await freePort(), uiPort: await freePort() });
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test((err as Error).message)) throw err;
    }
  }
}

export async function startCluster(
  opts: { dataDir?: string } & Pick<StartWorkersOptions, 'hostActivityInterceptors' | 'workloadTickMs'> = {},
): Promise<TestCluster> {
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-it-'));
  const server = await startServerOnFreePorts(dataDir);
  const workerConnection = await NativeConnection.connect({ address: server.address });
  const clientConnection = await Connection.connect({ address: server.address });
  const client = new Client({ connection: clientConnection, namespace: server.namespace });
  const workers = await startWorkers({
    connection: workerConnection,
    namespace: server.namespace,
    dataDir,
    hostActivityInterceptors: opts.hostActivityInterceptors,
    workloadTickMs: opts.workloadTickMs,
  });
  return {
    dataDir,
    server,
    client,
    workers,
    async stop() {
      await workers.shutdown();
      await workerConnection.close();
      await clientConnection.close();
      await server.stop();
      if (!opts.dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
