import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Connection, Client } from '@temporalio/client';
import { InstanceIdKey, SEARCH_ATTRIBUTES } from '../../src/contracts';
import { temporalCliPath, testServerPath, REPO_ROOT } from '../../src/temporal/binaries';
import {
  readServerState,
  serverStatePath,
  startDevServer,
  type DevServer,
} from '../../src/temporal/dev-server';
import { freePort, isPortOpen } from '../../src/temporal/ports';

// temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
const KEYWORD = 2;

describe('binary lookup', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-bin-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('prefers the explicit env path, then the pinned copy under .tools', () => {
    const fake = path.join(dir, 'temporal');
    fs.writeFileSync(fake, '#!/bin/sh\n', { mode: 0o755 });
    expect(temporalCliPath({ REHOME_TEMPORAL_CLI: fake, PATH: '' })).toBe(fake);
    expect(temporalCliPath({ PATH: dir })).toBe(
      path.join(REPO_ROOT, '.tools', 'temporal', 'bin', 'temporal'),
    );
    expect(testServerPath({ PATH: '' })).toBe(
      path.join(REPO_ROOT, '.tools', 'temporal', 'bin', 'temporal-test-server'),
    );
  });

  test('an explicit path that is not executable is an error, not a silent fallback', () => {
    expect(() => temporalCliPath({ REHOME_TEMPORAL_CLI: path.join(dir, 'missing') })).toThrow(
      /REHOME_TEMPORAL_CLI=.*missing is not an executable file/,
    );
  });
});

describe('embedded dev server', () => {
  let dataDir: string;
  const servers: DevServer[] = [];
  const connections: Connection[] = [];

  beforeAll(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-devserver-'));
  });
  afterAll(async () => {
    for (const c of connections) await c.close();
    for (const s of servers) await s.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  async function start(port: number, uiPort: number): Promise<DevServer> {
    const server = await startDevServer({ dataDir, port, uiPort });
    servers.push(server);
    return server;
  }

  async function client(server: DevServer): Promise<Client> {
    const connection = await Connection.connect({ address: server.address });
    connections.push(connection);
    return new Client({ connection, namespace: server.namespace });
  }

  test('registers the search attributes, keeps workflows across a restart, stops cleanly', async () => {
    const port = await freePort();
    const uiPort = await freePort();
    const first = await start(port, uiPort);
    expect(first.address).toBe(`127.0.0.1:${port}`);
    expect(first.uiUrl).toBe(`http://127.0.0.1:${uiPort}`);
    expect(readServerState(dataDir)?.address).toBe(first.address);

    const c1 = await client(first);
    const { customAttributes } = await c1.connection.operatorService.listSearchAttributes({
      namespace: first.namespace,
    });
    for (const name of Object.keys(SEARCH_ATTRIBUTES)) expect(customAttributes?.[name]).toBe(KEYWORD);
    expect(Object.keys(SEARCH_ATTRIBUTES)).toHaveLength(5);

    // No worker polls this queue: the workflow stays running, which is what a restart must keep.
    const workflowId = `dev-server-test-${Date.now()}`;
    await c1.workflow.start('liveMigration', {
      taskQueue: 'rehome-test-no-worker',
      workflowId,
      args: [{ instanceId: 'i-1', targetHostId: 'h-2' }],
      typedSearchAttributes: [{ key: InstanceIdKey, value: 'i-1' }],
    });
    await c1.connection.close();
    connections.length = 0;

    await first.stop();
    expect(await isPortOpen('127.0.0.1', port)).toBe(false);
    expect(fs.existsSync(serverStatePath(dataDir))).toBe(false);

    // Same database file; the search attributes already exist, which must not stop the start.
    const second = await start(port, uiPort);
    const c2 = await client(second);
    const description = await c2.workflow.getHandle(workflowId).describe();
    expect(description.status.name).toBe('RUNNING');
    expect(description.type).toBe('liveMigration');
    expect(description.typedSearchAttributes.get(InstanceIdKey)).toBe('i-1');
    await c2.workflow.getHandle(workflowId).terminate('test over');

    await second.stop();
    await second.stop(); // idempotent
    expect(await isPortOpen('127.0.0.1', port)).toBe(false);
  });

  test('says so when the data dir or the port is already in use by a Temporal server', async () => {
    const port = await freePort();
    const server = await start(port, await freePort());
    await expect(
      startDevServer({ dataDir, port: await freePort(), uiPort: await freePort() }),
    ).rejects.toThrow(/a Temporal dev server \(pid \d+\) already runs on .*temporal\.db at 127\.0\.0\.1:\d+/);
    const otherDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-devserver-other-'));
    try {
      await expect(startDevServer({ dataDir: otherDir, port, uiPort: await freePort() })).rejects.toThrow(
        `port ${port} is already used by another Temporal server at 127.0.0.1:${port}`,
      );
    } finally {
      fs.rmSync(otherDir, { recursive: true, force: true });
    }
    await server.stop();
  });

  test('a server that dies at start is reported with its last words', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-devserver-bad-'));
    const fake = path.join(dir, 'temporal');
    fs.writeFileSync(
      fake,
      '#!/bin/sh\necho "starting" ; echo "Error: cannot open the database" >&2\nexit 3\n',
      {
        mode: 0o755,
      },
    );
    const saved = process.env.REHOME_TEMPORAL_CLI;
    process.env.REHOME_TEMPORAL_CLI = fake;
    try {
      await expect(
        startDevServer({ dataDir: dir, port: await freePort(), uiPort: await freePort() }),
      ).rejects.toThrow(
        /exited \(3\) before it was ready: Error: cannot open the database \(see .*temporal-server\.log\)/,
      );
      expect(readServerState(dir)).toBeUndefined();
    } finally {
      if (saved === undefined) delete process.env.REHOME_TEMPORAL_CLI;
      else process.env.REHOME_TEMPORAL_CLI = saved;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('does not outlive the process that started it, even when that process is SIGKILLed', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-leash-'));
    const port = await freePort();
    const uiPort = await freePort();
    const parent = spawn(
      process.execPath,
      [
        '-r',
        'ts-node/register/transpile-only',
        path.join(__dirname, '../helpers/server-child.ts'),
        dir,
        String(port),
        String(uiPort),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        parent.stdout!.on('data', (chunk: Buffer) => chunk.toString().includes('ready') && resolve());
        parent.once('exit', (code) =>
          reject(new Error(`the child exited (${code}) before its server was ready`)),
        );
      });
      expect(await isPortOpen('127.0.0.1', port)).toBe(true);
      parent.kill('SIGKILL');
      // The server closes its ports first, then finishes shutting down; wait for both.
      let open = true;
      let alive = true;
      for (let i = 0; i < 150 && (open || alive); i++) {
        await new Promise((r) => setTimeout(r, 200));
        open = await isPortOpen('127.0.0.1', port);
        alive = readServerState(dir) !== undefined;
      }
      expect(open).toBe(false);
      expect(alive).toBe(false);
    } finally {
      parent.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
