import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { WorkflowFailedError } from '@temporalio/client';
import { ActivityFailure, RetryState } from '@temporalio/common';
import { errorLine } from '../../src/cli/errors';
import { parseCount, parseRate, parseSize } from '../../src/cli/sizes';
import { operationId } from '../../src/cli/start';
import { formatBytes, formatDuration, ID_PATTERN } from '../../src/contracts';
import { dataDir, resolveTemporal, workflowListUrl, workflowUrl } from '../../src/temporal/connection';
import { freePort } from '../../src/temporal/ports';
import { version } from '../../package.json';

const BIN = path.resolve(__dirname, '../../bin/rehome.js');

describe('parseSize', () => {
  test.each([
    ['256MiB', 256 * 1024 ** 2],
    ['1GiB', 1024 ** 3],
    ['512M', 512 * 1024 ** 2],
    ['4096', 4096],
    ['1.5 GiB', 1.5 * 1024 ** 3],
    ['64k', 64 * 1024],
    ['2mb', 2_000_000],
    ['10B', 10],
  ])('%s is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  test.each([
    ['', /is not a size/],
    ['-1MiB', /is not a size/],
    ['12 parsecs', /unknown unit "parsecs"/],
    ['1.3KiB', /not a whole number of bytes/],
    ['99999999TiB', /too large/],
  ])('%j is rejected', (text, why) => {
    expect(() => parseSize(text, '--volume-size')).toThrow(why);
    expect(() => parseSize(text, '--volume-size')).toThrow(/^--volume-size /);
  });

  test('rates take an optional /s, and 0 or unlimited mean no limit', () => {
    expect(parseRate('100MiB/s')).toBe(100 * 1024 ** 2);
    expect(parseRate('4MiB')).toBe(4 * 1024 ** 2);
    expect(parseRate('0')).toBe(0);
    expect(parseRate('unlimited')).toBe(0);
    expect(() => parseRate('fast')).toThrow(/rate "fast" is not a size/);
  });

  test('counts are whole numbers above a minimum', () => {
    expect(parseCount('4', '--hosts')).toBe(4);
    expect(() => parseCount('0', '--hosts')).toThrow('--hosts "0" is not valid: give a whole number >= 1');
    expect(() => parseCount('2.5', '--hosts')).toThrow(/not valid/);
  });
});

describe('formatting', () => {
  test('bytes and durations read like an operator writes them', () => {
    expect(formatBytes(256 * 1024 ** 2)).toBe('256 MiB');
    expect(formatBytes(1.5 * 1024 ** 3)).toBe('1.5 GiB');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatDuration(12.4)).toBe('12 ms');
    expect(formatDuration(3200)).toBe('3.2 s');
    expect(formatDuration(125_000)).toBe('2 min 5 s');
  });
});

describe('operationId', () => {
  test('names what the workflow acts on and stays a valid id', () => {
    const id = operationId('migrate', ['i-3', 'to-h-2'], 1_700_000_000_000);
    expect(id).toBe(`migrate-i-3-to-h-2-${(1_700_000_000_000).toString(36)}`);
    const long = operationId('migrate', ['i-'.padEnd(60, 'x'), 'to-h-2']);
    expect(long).toMatch(ID_PATTERN);
    expect(long.startsWith('migrate-')).toBe(true);
  });
});

describe('errorLine', () => {
  test("a failed workflow shows its cause's message on one line", () => {
    const cause = ApplicationFailure.create({
      message: 'instance i-9 not found:\n`rehome fleet list` shows them',
      nonRetryable: true,
    });
    const wrapped = new ActivityFailure(
      'activity failed',
      'planMigration',
      '1',
      RetryState.NON_RETRYABLE_FAILURE,
      'w',
      cause,
    );
    const err = new WorkflowFailedError(
      'Workflow execution failed',
      wrapped,
      RetryState.NON_RETRYABLE_FAILURE,
    );
    expect(errorLine(err)).toBe('instance i-9 not found: `rehome fleet list` shows them');
    expect(
      errorLine(
        new WorkflowFailedError(
          'Workflow execution cancelled',
          new CancelledFailure('cancelled'),
          RetryState.CANCEL_REQUESTED,
        ),
      ),
    ).toBe('cancelled');
    expect(errorLine(new Error('plain'))).toBe('plain');
  });
});

describe('resolveTemporal', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-conn-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  // No HOME or XDG dir: a developer's own Temporal config file must not leak into these tests.
  const bare = { PATH: process.env.PATH ?? '' };

  test('without Temporal environment configuration it is the embedded server on 127.0.0.1:7233', () => {
    const target = resolveTemporal({ dataDir: dir, env: bare });
    expect(target).toMatchObject({
      embedded: true,
      address: '127.0.0.1:7233',
      namespace: 'default',
      uiUrl: 'http://127.0.0.1:8233',
    });
    expect(workflowUrl(target, 'migrate-i-3-x')).toBe(
      'http://127.0.0.1:8233/namespaces/default/workflows/migrate-i-3-x',
    );
    expect(workflowListUrl(target, 'InstanceId = "i-3"')).toBe(
      'http://127.0.0.1:8233/namespaces/default/workflows?query=InstanceId%20%3D%20%22i-3%22',
    );
  });

  test('TEMPORAL_ADDRESS and friends select an existing cluster and start nothing', () => {
    const target = resolveTemporal({
      dataDir: dir,
      env: {
        ...bare,
        TEMPORAL_ADDRESS: 'my-ns.a1b2c.tmprl.cloud:7233',
        TEMPORAL_NAMESPACE: 'my-ns.a1b2c',
        TEMPORAL_API_KEY: 'k',
      },
    });
    expect(target.embedded).toBe(false);
    expect(target.namespace).toBe('my-ns.a1b2c');
    expect(target.connectionOptions).toMatchObject({
      address: 'my-ns.a1b2c.tmprl.cloud:7233',
      apiKey: 'k',
      tls: true,
    });
    expect(target.uiUrl).toBe('https://cloud.temporal.io');
  });

  test('a profile in a Temporal config file works too', () => {
    const file = path.join(dir, 'temporal.toml');
    fs.writeFileSync(file, '[profile.staging]\naddress = "temporal.internal:7233"\nnamespace = "ops"\n');
    const target = resolveTemporal({
      dataDir: dir,
      env: { ...bare, TEMPORAL_CONFIG_FILE: file, TEMPORAL_PROFILE: 'staging' },
    });
    expect(target).toMatchObject({ embedded: false, address: 'temporal.internal:7233', namespace: 'ops' });
    expect(target.uiUrl).toBeUndefined();
  });

  test('the data dir comes from the flag, then REHOME_DATA_DIR, then ./.rehome', () => {
    expect(dataDir('x', { REHOME_DATA_DIR: '/srv/r' })).toBe(path.resolve('x'));
    expect(dataDir(undefined, { REHOME_DATA_DIR: '/srv/r' })).toBe('/srv/r');
    expect(dataDir(undefined, {})).toBe(path.join(process.cwd(), '.rehome'));
  });
});

describe('rehome CLI errors', () => {
  function rehome(
    args: string[],
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(
        process.execPath,
        [BIN, ...args],
        { env: { ...process.env, ...env }, timeout: 60_000 },
        (err, stdout, stderr) => resolve({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
      );
    });
  }

  function expectOneLine(result: { code: number; stderr: string }, message: RegExp) {
    expect(result.code).toBe(1);
    const lines = result.stderr.split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^rehome: /);
    expect(lines[0]).toMatch(message);
    expect(result.stderr).not.toMatch(/\n\s+at /);
  }

  test('bad arguments give one line on stderr and exit code 1', async () => {
    const [size, id, unknown, missing] = await Promise.all([
      rehome(['fleet', 'init', '--hosts', '4', '--instances', '8', '--volume-size', '256XB']),
      rehome(['migrate', '../x', '--to', 'h-2']),
      rehome(['frobnicate']),
      rehome(['migrate', 'i-3']),
    ]);
    expectOneLine(size, /--volume-size "256XB" has an unknown unit "XB"/);
    expectOneLine(id, /instance id "\.\.\/x" is not a valid id/);
    expectOneLine(unknown, /unknown command 'frobnicate'/);
    expectOneLine(missing, /required option '--to <hostId>' not specified/);
  });

  test('no server: one line that says how to start one', async () => {
    const port = await freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-cli-'));
    try {
      const result = await rehome(['status', 'migrate-i-3-x', '--data-dir', dir], {
        TEMPORAL_ADDRESS: `127.0.0.1:${port}`,
      });
      expectOneLine(result, new RegExp(`cannot reach Temporal at 127\\.0\\.0\\.1:${port}`));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('no embedded server: one line that says how to start one', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-cli-'));
    try {
      // A state file naming a live pid (ours) and a port nobody listens on: the embedded target, but down.
      const port = await freePort();
      const state = {
        pid: process.pid,
        address: `127.0.0.1:${port}`,
        uiUrl: 'http://127.0.0.1:1',
        namespace: 'default',
      };
      fs.writeFileSync(path.join(dir, 'temporal-server.json'), JSON.stringify(state));
      const result = await rehome(['cancel', 'migrate-i-3-x', '--data-dir', dir], {
        TEMPORAL_ADDRESS: '',
        TEMPORAL_PROFILE: '',
        TEMPORAL_CONFIG_FILE: path.join(dir, 'none.toml'),
      });
      expectOneLine(
        result,
        new RegExp(
          `^rehome: no Temporal server at 127\\.0\\.0\\.1:${port}: start one with \`npx rehome up\` \\(or \`npm run demo\`\\), or set TEMPORAL_ADDRESS$`,
        ),
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('--help works and exits 0', async () => {
    const result = await rehome(['--help']);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/Usage: rehome/);
    expect(result.stdout).toMatch(/migrate \[options\] <instanceId>/);
  });

  test("`npx rehome` runs the project's own bin without asking a registry", async () => {
    // A fresh npm cache and a registry nobody answers on: any network lookup would fail the run.
    const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-npx-'));
    try {
      const result = await new Promise<{ code: number; stdout: string }>((resolve) => {
        execFile(
          'npx',
          ['rehome', '--version'],
          {
            cwd: path.resolve(__dirname, '../..'),
            env: { ...process.env, npm_config_cache: cache, npm_config_registry: 'http://127.0.0.1:9/' },
            timeout: 60_000,
          },
          (err, stdout) => resolve({ code: err ? Number(err.code ?? 1) : 0, stdout }),
        );
      });
      expect(result.code).toBe(0);
      expect(result.stdout.trim()).toBe(version);
    } finally {
      fs.rmSync(cache, { recursive: true, force: true });
    }
  });
});
