import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { WorkflowFailedError } from '@temporalio/client';
import { ActivityFailure, RetryState } from '@temporalio/common';
import { main } from '../../src/cli';
import { errorLine } from '../../src/cli/errors';
import { migrationInput, migrationOutcome, restoredLine } from '../../src/cli/migrate';
import { restoreInput, restoreProgressLine, restoreRequest, restoreSummary } from '../../src/cli/restore';
import { migrationSummary } from '../../src/cli/progress';
import { parseCount, parseRate, parseSize } from '../../src/cli/sizes';
import {
  deleteResultText,
  deleteSnapshotRequest,
  parseKeep,
  snapshotInput,
  snapshotProgressLine,
  snapshotRequest,
  snapshotResultText,
  snapshotWorkflowId,
} from '../../src/cli/snapshot';
import { operationId } from '../../src/cli/start';
import { describeResult } from '../../src/cli/watch';
import { WorkflowType } from '../../src/contracts';
import {
  formatBytes,
  formatDuration,
  ID_PATTERN,
  type LiveMigrationResult,
  type RestoreInstanceResult,
  type SnapshotInfo,
  type SnapshotUploadMeta,
} from '../../src/contracts';
import { FleetRuntime } from '../../src/fleet/fleet-runtime';
import { openInventory } from '../../src/fleet/inventory';
import { FileObjectStore, objectStoreRoot } from '../../src/fleet/object-store';
import { patternBytes } from '../../src/fleet/pattern';
import { SnapshotStore } from '../../src/fleet/snapshot-store';
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

  test('bad snapshot, restore and migrate arguments fail before Temporal is contacted', async () => {
    // Nobody listens on this port: reaching Temporal would fail with "cannot reach Temporal" instead.
    const port = await freePort();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-cli-'));
    try {
      const env = { TEMPORAL_ADDRESS: `127.0.0.1:${port}` };
      const run = (...args: string[]) => rehome([...args, '--data-dir', dir], env);
      // Six processes at once: each is a full CLI start; the finer cases are unit-tested below.
      const [id, keep, account, noAccount, noIds, both] = await Promise.all([
        run('snapshot', 'create', '../x'),
        run('snapshot', 'create', 'i-3', '--keep', '0'),
        run('restore', 'snap-1', '--account', 'Acct_1'),
        run('snapshot', 'delete', 'snap-1'),
        run('restore', '--account', 'acct-1'),
        run('migrate', 'i-3', '--to', 'h-2', '--no-snapshot', '--keep-snapshot'),
      ]);
      expectOneLine(id, /instance id "\.\.\/x" is not a valid id/);
      expectOneLine(keep, /--keep "0" is not valid: give a whole number >= 1/);
      expectOneLine(account, /--account "Acct_1" is not a valid id/);
      expectOneLine(noAccount, /required option '--account <account>' not specified/);
      expectOneLine(noIds, /missing required argument 'snapshotId'/);
      expectOneLine(both, /--keep-snapshot needs the snapshot that --no-snapshot turns off/);
      for (const r of [id, keep, account, noAccount, noIds, both]) expect(r.stderr).not.toMatch(/Temporal/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
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
    expect(result.stdout).toMatch(/snapshot/);
    expect(result.stdout).toMatch(/restore \[options\] <snapshotId\.\.\.>/);
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

describe('snapshot and restore requests', () => {
  test('snapshot create: event defaults to manual; account and --keep are passed only when given', () => {
    expect(snapshotInput('i-3', {})).toEqual({ instanceId: 'i-3', event: 'manual' });
    expect(snapshotInput('i-3', { account: 'acct-1', keep: 5, event: 'maintenance:mw-42' })).toEqual({
      instanceId: 'i-3',
      event: 'maintenance:mw-42',
      account: 'acct-1',
      keepLast: 5,
    });
    expect(() => snapshotInput('I-3', {})).toThrow(/instance id "I-3" is not a valid id/);
    expect(() => snapshotInput('i-3', { account: '../a' })).toThrow(/--account "\.\.\/a" is not a valid id/);
    expect(() => snapshotInput('i-3', { event: 'a b' })).toThrow(/--event "a b" is not valid/);
  });

  test('--keep is a whole number from 1 to 1000', () => {
    expect(parseKeep('1')).toBe(1);
    expect(parseKeep('1000')).toBe(1000);
    expect(() => parseKeep('0')).toThrow('--keep "0" is not valid: give a whole number >= 1');
    expect(() => parseKeep('2.5')).toThrow(/--keep "2.5" is not valid/);
    expect(() => parseKeep('three')).toThrow(/--keep "three" is not valid/);
    expect(() => parseKeep('1001')).toThrow(/--keep 1001 is out of range/);
  });

  test('snapshot create starts preMigrationSnapshot labelled like a migration', () => {
    const input = snapshotInput('i-3', { account: 'acct-1' });
    const request = snapshotRequest(input, { hostId: 'h-1', account: 'acct-1' });
    expect(request).toMatchObject({
      type: 'preMigrationSnapshot',
      args: [{ instanceId: 'i-3', event: 'manual', account: 'acct-1' }],
      summary: 'snapshot i-3 on h-1 (manual)',
      visibility: {
        operation: 'pre-migration-snapshot',
        instanceId: 'i-3',
        hostId: 'h-1',
        account: 'acct-1',
        phase: 'validating',
      },
    });
    expect(request.workflowId).toMatch(/^snapshot-i-3-[0-9a-z]+$/);
    expect(request.workflowId).toMatch(ID_PATTERN);
    expect(snapshotWorkflowId('i-3', 1_700_000_000_000)).toBe(
      `snapshot-i-3-${(1_700_000_000_000).toString(36)}`,
    );
    // Without an inventory the account still labels the workflow when the operator gave it.
    const bare = snapshotRequest(snapshotInput('i-4', {}));
    expect(bare.visibility).toEqual({
      operation: 'pre-migration-snapshot',
      instanceId: 'i-4',
      hostId: undefined,
      account: undefined,
      phase: 'validating',
    });
    expect(bare.summary).toBe('snapshot i-4 (manual)');
  });

  test('restore takes one snapshot per volume, the account and an optional host', () => {
    expect(restoreInput(['snap-1', 'snap-2'], { account: 'acct-1' })).toEqual({
      account: 'acct-1',
      snapshotIds: ['snap-1', 'snap-2'],
    });
    const input = restoreInput(['snap-1'], { account: 'acct-1', host: 'h-3' });
    expect(input).toEqual({ account: 'acct-1', snapshotIds: ['snap-1'], targetHostId: 'h-3' });
    expect(() => restoreInput(['snap-1', 'Snap 2'], { account: 'acct-1' })).toThrow(
      /snapshot id "Snap 2" is not a valid id/,
    );
    expect(() => restoreInput(['snap-1'], { account: 'ACCT' })).toThrow(/--account "ACCT" is not a valid id/);
    expect(() => restoreInput(['snap-1'], { account: 'acct-1', host: 'H/2' })).toThrow(
      /--host "H\/2" is not a valid id/,
    );
    expect(() => restoreInput(['snap-1', 'snap-1'], { account: 'acct-1' })).toThrow(/given twice/);
    const many = Array.from({ length: 65 }, (_, n) => `snap-${n}`);
    expect(() => restoreInput(many, { account: 'acct-1' })).toThrow(/restore takes 1 to 64/);

    const known = restoreRequest(input, [snapshotInfo('snap-1', 'i-7', 'i-7-v1')]);
    expect(known).toMatchObject({
      type: 'restoreInstance',
      args: [{ account: 'acct-1', snapshotIds: ['snap-1'], targetHostId: 'h-3' }],
      summary: 'restore i-7 from snap-1 → h-3',
      visibility: {
        operation: 'restore-instance',
        instanceId: 'i-7',
        hostId: 'h-3',
        account: 'acct-1',
        phase: 'validating',
      },
    });
    expect(known.workflowId).toMatch(/^restore-i-7-[0-9a-z]+$/);
    const unknown = restoreRequest(restoreInput(['snap-1'], { account: 'acct-1' }));
    expect(unknown.workflowId).toMatch(/^restore-snap-1-[0-9a-z]+$/);
    expect(unknown.summary).toBe('restore from snap-1 → a placed host');
    expect(unknown.visibility.instanceId).toBeUndefined();
  });

  test('snapshot delete starts deleteSnapshot for the account', () => {
    const request = deleteSnapshotRequest(
      { account: 'acct-1', snapshotId: 'snap-1' },
      snapshotInfo('snap-1', 'i-7', 'i-7-v1'),
    );
    expect(request).toMatchObject({
      type: 'deleteSnapshot',
      args: [{ account: 'acct-1', snapshotId: 'snap-1' }],
      summary: 'delete snapshot snap-1 of i-7-v1 (i-7)',
      visibility: { operation: 'delete-snapshot', instanceId: 'i-7', account: 'acct-1' },
    });
    expect(request.workflowId).toMatch(/^snapshot-delete-snap-1-[0-9a-z]+$/);
  });

  test('migrate: --no-snapshot and --keep-snapshot reach the input only when given', () => {
    const base = { to: 'h-2', snapshot: true };
    expect(migrationInput('i-3', base)).toEqual({
      instanceId: 'i-3',
      targetHostId: 'h-2',
      bandwidthBytesPerSec: 0,
    });
    expect(migrationInput('i-3', { ...base, snapshot: false })).toMatchObject({ snapshot: false });
    expect(migrationInput('i-3', { ...base, keepSnapshot: true })).toEqual({
      instanceId: 'i-3',
      targetHostId: 'h-2',
      bandwidthBytesPerSec: 0,
      keepSnapshot: true,
    });
    expect(() => migrationInput('i-3', { to: 'h-2', snapshot: false, keepSnapshot: true })).toThrow(
      /--keep-snapshot needs the snapshot/,
    );
    expect(() => migrationInput('i-3', { ...base, to: 'H2' })).toThrow(
      /target host id "H2" is not a valid id/,
    );
  });

  test('a migration that ended in a restore says so, where, and from which snapshot', () => {
    const restored: RestoreInstanceResult = {
      instanceId: 'i-3',
      account: 'acct-1',
      fromHostId: 'h-1',
      hostId: 'h-4',
      snapshotIds: ['snap-a1'],
      bytesRestored: 64 * 1024 ** 2,
      previousReleased: false,
    };
    const migrated = migrationResult();
    expect(restoredLine(migrated)).toBeUndefined();
    expect(migrationOutcome(migrated)).toMatch(/h-1 → h-2/);
    expect(migrationOutcome({ ...migrated, snapshotIds: ['snap-a1'] })).toMatch(
      /pre-migration snapshot kept: snap-a1/,
    );
    const result = { ...migrated, snapshotIds: ['snap-a1'], restored };
    expect(restoredLine(result)).toBe(
      'i-3 was restored from snapshot snap-a1 on host h-4 instead of migrated: the switch to h-2 failed and h-1 was lost (writes after the snapshot are lost)',
    );
    const text = migrationOutcome(result);
    expect(text.split('\n')[0]).toBe(restoredLine(result));
    expect(text).toMatch(/64 MiB/);
    expect(text).toMatch(/not released: h-1 did not answer/);
    expect(restoreSummary({ ...restored, previousReleased: true })).toMatch(/released on h-1/);
  });

  test('progress and results read as one line per step', () => {
    expect(
      snapshotProgressLine({
        phase: 'snapshotting',
        instanceId: 'i-3',
        volumesDone: 1,
        volumesTotal: 2,
        bytesUploaded: 3 * 1024 ** 2,
      }),
    ).toBe('snapshotting 1/2 volumes, 3 MiB uploaded');
    expect(
      restoreProgressLine({
        phase: 'restoring',
        instanceId: 'i-3',
        hostId: 'h-4',
        volumesDone: 0,
        volumesTotal: 1,
        bytesRestored: 0,
      }),
    ).toBe('restoring i-3 on h-4, 0/1 volumes, 0 B restored');
    expect(
      restoreProgressLine({
        phase: 'validating',
        instanceId: '',
        hostId: '',
        volumesDone: 0,
        volumesTotal: 0,
        bytesRestored: 0,
      }),
    ).toBe('validating, 0 B restored');
    const snapshot = { ...snapshotInfo('snap-1', 'i-3', 'i-3-v1'), atSeq: 17, pausedMs: 4.2 };
    const text = snapshotResultText({
      instanceId: 'i-3',
      account: 'acct-1',
      hostId: 'h-1',
      snapshots: [snapshot],
      retired: ['snap-0'],
    });
    expect(text).toMatch(/snapshot of i-3 \(acct-1\) on h-1: 128 KiB uploaded/);
    expect(text).toMatch(/snap-1 .* i-3-v1 .* 256 KiB .* 128 KiB .* 4 ms/);
    expect(text).toMatch(/retired .*: snap-0/);
    expect(
      snapshotResultText({
        instanceId: 'i-3',
        account: 'acct-1',
        hostId: 'h-1',
        snapshots: [],
        retired: [],
        skipped: 'instance i-3 has no instance-store volumes: nothing to snapshot',
      }),
    ).toBe('instance i-3 has no instance-store volumes: nothing to snapshot');
    const gc = { packsDeleted: 1, packsRepacked: 0, bytesFreed: 2 * 1024 ** 2, bytesLive: 0 };
    expect(deleteResultText({ snapshotId: 'snap-1', deleted: true, gc })).toBe(
      'deleted snap-1; 2 MiB of unreferenced chunks freed',
    );
    expect(
      deleteResultText({ snapshotId: 'snap-1', deleted: false, gc: { ...gc, skipped: 'upload open' } }),
    ).toBe('snap-1 was already deleted; unreferenced chunks not collected yet (upload open)');
  });
});

describe('rehome snapshot list and show over a snapshot store', () => {
  const KiB = 1024;
  let dir: string;
  let out: string[];
  let err: string[];

  async function commit(store: SnapshotStore, meta: SnapshotUploadMeta): Promise<void> {
    const writer = await store.openUpload(meta);
    await writer.putBlocks(0, patternBytes(meta.snapshotId, meta.sizeBytes));
    await writer.commit();
  }

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-cli-snapshots-'));
    const store = new SnapshotStore(new FileObjectStore(objectStoreRoot(dir)));
    try {
      const base = { sizeBytes: 256 * KiB, blockSize: 64 * KiB, sourceEvent: 'manual' };
      await commit(store, {
        ...base,
        snapshotId: 'snap-a',
        account: 'acct-1',
        instanceId: 'i-1',
        volumeId: 'i-1-v1',
        createdAt: '2025-03-01T10:00:00.000Z',
      });
      await commit(store, {
        ...base,
        snapshotId: 'snap-b',
        account: 'acct-1',
        instanceId: 'i-2',
        volumeId: 'i-2-v1',
        sourceEvent: 'migration:migrate-i-2-to-h-3-x',
        createdAt: '2025-03-02T10:00:00.000Z',
      });
      await commit(store, {
        ...base,
        snapshotId: 'snap-c',
        account: 'acct-2',
        instanceId: 'i-9',
        volumeId: 'i-9-v1',
        createdAt: '2025-03-03T10:00:00.000Z',
      });
    } finally {
      await store.close();
    }
  });

  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  beforeEach(() => {
    out = [];
    err = [];
    captureConsole(
      () => out,
      () => err,
    );
  });
  afterEach(() => jest.restoreAllMocks());

  const rehome = (...args: string[]) => main(['node', 'rehome', ...args, '--data-dir', dir]);

  test("list shows only the account's snapshots, newest first, and filters by instance", async () => {
    expect(await rehome('snapshot', 'list', '--account', 'acct-1', '--json')).toBe(0);
    const listed = JSON.parse(out.join('\n')) as SnapshotInfo[];
    expect(listed.map((s) => s.snapshotId)).toEqual(['snap-b', 'snap-a']);
    expect(listed[0]).toMatchObject({ instanceId: 'i-2', sizeBytes: 256 * KiB, chunkCount: 4 });
    expect(listed[0]).not.toHaveProperty('chunks');

    out = [];
    expect(await rehome('snapshot', 'list', '--account', 'acct-1', '--instance', 'i-1', '--json')).toBe(0);
    expect((JSON.parse(out.join('\n')) as SnapshotInfo[]).map((s) => s.snapshotId)).toEqual(['snap-a']);

    out = [];
    expect(await rehome('snapshot', 'list', '--account', 'acct-1')).toBe(0);
    const table = out.join('\n');
    expect(table).toMatch(/snapshot .* instance .* volume .* size .* uploaded .* event .* created/);
    expect(table).toMatch(/snap-b .* i-2 .* i-2-v1 .* 256 KiB .* 256 KiB .* migration:migrate-i-2-to-h-3-x/);
    expect(table).toMatch(/snap-a .* i-1/);
    expect(table).not.toMatch(/snap-c/);

    out = [];
    expect(await rehome('snapshot', 'list', '--account', 'acct-3')).toBe(0);
    expect(out).toEqual(['no snapshots of account acct-3 match']);
    expect(err).toEqual([]);
  });

  test('show describes one snapshot with its chunk count but not its chunks', async () => {
    expect(await rehome('snapshot', 'show', 'snap-a', '--account', 'acct-1', '--json')).toBe(0);
    const info = JSON.parse(out.join('\n')) as SnapshotInfo;
    expect(info).toMatchObject({
      snapshotId: 'snap-a',
      account: 'acct-1',
      volumeId: 'i-1-v1',
      chunkCount: 4,
    });
    expect(info).not.toHaveProperty('chunks');

    out = [];
    expect(await rehome('snapshot', 'show', 'snap-a', '--account', 'acct-1')).toBe(0);
    expect(out.join('\n')).toMatch(/chunks .* 4 × 64 KiB \(blake3\)/);
  });

  test('another account is refused with one line, and so is a missing store', async () => {
    expect(await rehome('snapshot', 'show', 'snap-a', '--account', 'acct-2')).toBe(1);
    expect(err).toEqual(['rehome: snapshot snap-a does not belong to account acct-2']);
    expect(out).toEqual([]);

    err = [];
    expect(await rehome('snapshot', 'show', 'snap-zz', '--account', 'acct-1')).toBe(1);
    expect(err).toHaveLength(1);
    expect(err[0]).toMatch(/^rehome: snapshot snap-zz not found for account acct-1/);

    err = [];
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-cli-empty-'));
    try {
      expect(
        await main(['node', 'rehome', 'snapshot', 'list', '--account', 'acct-1', '--data-dir', empty]),
      ).toBe(1);
      expect(err).toHaveLength(1);
      expect(err[0]).toMatch(
        /^rehome: no snapshot store in .*: snapshots are taken with `rehome snapshot create/,
      );
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });
});

function snapshotInfo(snapshotId: string, instanceId: string, volumeId: string): SnapshotInfo {
  return {
    snapshotId,
    account: 'acct-1',
    instanceId,
    volumeId,
    sizeBytes: 256 * 1024,
    blockSize: 64 * 1024,
    chunkSize: 64 * 1024,
    chunkCount: 4,
    hashAlgorithm: 'blake3',
    sourceEvent: 'manual',
    createdAt: '2025-03-01T10:00:00.000Z',
    bytesUploaded: 128 * 1024,
    bytesTotal: 256 * 1024,
  };
}

/** What the CLI prints goes to the arrays `out()` and `err()` return at the time of each line. */
function captureConsole(out: () => string[], err: () => string[]): void {
  jest.spyOn(console, 'log').mockImplementation((line: unknown) => void out().push(String(line)));
  jest.spyOn(console, 'error').mockImplementation((line: unknown) => void err().push(String(line)));
}

function migrationResult(): LiveMigrationResult {
  return {
    instanceId: 'i-3',
    account: 'acct-1',
    sourceHostId: 'h-1',
    targetHostId: 'h-2',
    downtimeMs: 12,
    bytesCopied: 1024,
    bytesReadThrough: 0,
    durationMs: 3000,
    blocksVerified: 4,
    blocksWrittenOnTarget: 0,
    cancelRefused: false,
  };
}

describe('migration summary', () => {
  test('says when the source never answered its release and when bytes were copied twice', () => {
    const plain = migrationSummary(migrationResult());
    expect(plain).not.toContain('never answered');
    expect(plain).not.toContain('copied twice');
    const rough = migrationSummary({
      ...migrationResult(),
      sourceReleased: false,
      bytesRecopied: 4 * 1024 * 1024,
    });
    expect(rough).toMatch(/h-1 never answered its release: delete its stale copy of i-3/);
    expect(rough).toMatch(/copied twice\s+│\s+4 MiB/);
  });
});

describe('rehome status results', () => {
  test('describes each workflow type in one line instead of raw JSON', () => {
    const restored = {
      instanceId: 'i-3',
      account: 'acme',
      fromHostId: 'h-1',
      hostId: 'h-3',
      snapshotIds: ['snap-a'],
      bytesRestored: 4 * 1024 * 1024,
      previousReleased: false,
    };
    const restore = describeResult(WorkflowType.restoreInstance, restored);
    expect(restore).toContain('i-3');
    expect(restore).toContain('h-3');
    expect(restore).not.toContain('{');
    const deleted = describeResult(WorkflowType.deleteSnapshot, {
      snapshotId: 'snap-a',
      deleted: true,
      gc: { packsDeleted: 1, packsRepacked: 0, bytesFreed: 1024, bytesLive: 0 },
    });
    expect(deleted).toContain('snap-a');
    expect(deleted).not.toContain('{');
    const snapshot = describeResult(WorkflowType.preMigrationSnapshot, {
      instanceId: 'i-3',
      account: 'acme',
      hostId: 'h-1',
      snapshots: [],
      skipped: 'instance i-3 has no instance-store volumes: nothing to snapshot',
      retired: [],
    });
    expect(snapshot).toContain('no instance-store volumes');
  });
});

describe('rehome fleet check', () => {
  let dir: string;
  let out: string[];
  let err: string[];
  const savedAddress = process.env.TEMPORAL_ADDRESS;

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-cli-check-'));
    const inventory = openInventory(dir);
    const runtime = new FleetRuntime({ dataDir: dir });
    try {
      const layout = inventory.createFleet('fleet-init-1', {
        hosts: 2,
        instances: 2,
        volumeSizeBytes: 1024 * 1024,
        workload: { writeBytesPerSec: 0, writeSize: 4096 },
      });
      for (const i of layout.instances) {
        const volumes = layout.volumes.filter((v) => v.instanceId === i.instanceId);
        await (await runtime.host(i.hostId)).launch({ ...i, volumes });
      }
      inventory.markInstancesRunning(layout.instances.map((i) => i.instanceId));
    } finally {
      await runtime.close();
      inventory.close();
    }
    // Nobody listens there: the check runs without Temporal and says what it could not check.
    process.env.TEMPORAL_ADDRESS = `127.0.0.1:${await freePort()}`;
  });

  afterAll(() => {
    if (savedAddress === undefined) delete process.env.TEMPORAL_ADDRESS;
    else process.env.TEMPORAL_ADDRESS = savedAddress;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  beforeEach(() => {
    out = [];
    err = [];
    captureConsole(
      () => out,
      () => err,
    );
  });
  afterEach(() => jest.restoreAllMocks());

  const rehome = (...args: string[]) =>
    main(['node', 'rehome', 'fleet', 'check', ...args, '--data-dir', dir]);

  test('a clean fleet prints one OK line, noting that reservations were not checked without Temporal', async () => {
    expect(await rehome()).toBe(0);
    expect(out).toHaveLength(1);
    expect(out[0]).toMatch(/^fleet OK: 2 hosts, 2 instances, 2 volumes/);
    expect(out[0]).toMatch(/reservations were not checked against workflows \(cannot reach Temporal/);
    expect(err).toEqual([]);
  });

  test('violations are listed (table or JSON) and the exit code is 1', async () => {
    const image = path.join(dir, 'hosts', 'h-1', 'volumes', 'i-1-v0.img');
    const saved = `${image}.saved`;
    fs.renameSync(image, saved);
    try {
      expect(await rehome()).toBe(1);
      expect(out.join('\n')).toMatch(
        /missing-image .* i-1-v0 .* should be at hosts\/h-1\/volumes\/i-1-v0\.img/,
      );
      expect(err).toEqual([`rehome: 1 fleet invariant violation in ${dir}`]);

      out = [];
      expect(await rehome('--json')).toBe(1);
      const report = JSON.parse(out.join('\n')) as {
        ok: boolean;
        reservationsChecked: boolean;
        violations: unknown[];
      };
      expect(report).toMatchObject({ ok: false, reservationsChecked: false });
      expect(report.violations).toEqual([
        expect.objectContaining({ kind: 'missing-image', subject: 'i-1-v0' }),
      ]);
    } finally {
      fs.renameSync(saved, image);
    }
  });
});
