/**
 * The bad-input table: every CLI command and every workflow input tried with malformed, missing,
 * oversized, negative and hostile values, and a runner that checks each gives a clear error and
 * that nothing on disk, in the inventory or in the snapshot store changed.
 *
 * Stable API (test/integration/bad-input-table.test.ts and `npm run bench:faults` use it):
 *
 *   BAD_INPUT_CASES: BadInputCase[]
 *     { surface: 'cli' | 'workflow', name, command, input, expectField? }
 *     - cli: `command` is the CLI command ('fleet show', 'migrate', ...), `input` the argv after
 *       `rehome` (a string[], or a function of the fixture returning one).
 *     - workflow: `command` is the workflow type name, `input` its one argument (a value, or a
 *       function of the fixture returning one).
 *     - expectField: text (case-insensitive) the error must contain: the field or value at fault.
 *   BAD_INPUT_FLEET: FleetSpec the runner creates when the cluster has no fleet yet (idle workloads).
 *   runBadInputs(cluster, options?): Promise<BadInputReport>
 *     cluster: { client, dataDir, server: { address, namespace } } (a TestCluster fits), with
 *     workers running and every workload idle (a writing workload changes images by itself).
 *     Creates the fleet if there is none and one snapshot to refer to, then runs every case.
 *     Returns { tried, unclear: [{ case, why }], fingerprintBefore, fingerprintAfter, changed }.
 *
 * Clear means: a workflow fails with a non-retryable ApplicationFailure whose type is one of
 * src/contracts/errors.ts, with a one-line message naming the field or value and no stack trace;
 * the CLI exits non-zero with exactly one line on stderr, starting "rehome: ", and no stack trace.
 */
import { WorkflowFailedError, type Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import {
  CONTROL_TASK_QUEUE,
  ErrorType,
  MAX_VOLUME_BYTES,
  MiB,
  WorkflowType,
  type FleetSpec,
  type PreMigrationSnapshotResult,
} from '../../src/contracts';
import { HostStore } from '../../src/fleet/host-store';
import { INVENTORY_FILE, openInventory, type Inventory } from '../../src/fleet/inventory';
import { dataFingerprint } from './snapshot-checks';

/** What cases refer to: real ids of the cluster's fleet and files outside its data dir. */
export interface BadInputFixture {
  dataDir: string;
  /** A running instance with an instance-store volume, its host, owner and first volume. */
  instanceId: string;
  hostId: string;
  account: string;
  volumeId: string;
  /** An account that does not own instanceId. */
  otherAccount: string;
  /** Another instance and its volume's image: what a hostile path would read or overwrite. */
  otherInstanceId: string;
  otherImagePath: string;
  /** A host other than hostId; fullHostId has no room for instanceId (else it is otherHostId). */
  otherHostId: string;
  fullHostId: string;
  /** A committed snapshot of instanceId, owned by account. */
  snapshotId: string;
  /** Files outside the data dir: an empty file, one of 1000 bytes, a valid 1 MiB image, a directory. */
  emptyFile: string;
  oddSizeFile: string;
  imageFile: string;
  directory: string;
}

export type Input<T> = T | ((fx: BadInputFixture) => T);
/** Anything a client can send as a workflow's argument. */
export type WorkflowArgument = string | number | boolean | object | null | undefined;

export type BadInputCase =
  | { surface: 'cli'; name: string; command: string; input: Input<string[]>; expectField?: Input<string> }
  | {
      surface: 'workflow';
      name: string;
      command: string;
      input: Input<WorkflowArgument>;
      expectField?: Input<string>;
    };

export interface BadInputReport {
  tried: number;
  unclear: { case: BadInputCase; why: string }[];
  fingerprintBefore: string;
  fingerprintAfter: string;
  /** True when the inventory, an image or the snapshot store changed (the offending cases are in unclear). */
  changed: boolean;
}

export interface BadInputCluster {
  client: Client;
  dataDir: string;
  server: { address: string; namespace: string };
}

export interface RunBadInputsOptions {
  cases?: BadInputCase[];
  /** CLI processes serving the CLI cases side by side: default 2. */
  cliConcurrency?: number;
  /** A workflow that has not failed after this long is unclear (it is retrying): default 15 s. */
  workflowTimeoutMs?: number;
  log?: (line: string) => void;
}

/** Three hosts with room for two instances each, five instances: one host full, one slot free, idle workloads. */
export const BAD_INPUT_FLEET: FleetSpec = {
  hosts: 3,
  instances: 5,
  volumeSizeBytes: 1 * MiB,
  workload: { writeBytesPerSec: 0, writeSize: 4096 },
  instanceShape: { vcpu: 2, memoryMiB: 4096 },
  hostCapacity: { vcpu: 4, memoryMiB: 8192, diskBytes: 64 * MiB },
};

const LONG = 'a'.repeat(10_000);
const UNICODE = 'ïnstance-ü';
const BAD_IDS: [string, string][] = [
  ['path traversal', '../x'],
  ['an absolute path', '/etc/passwd'],
  ['a NUL byte', 'i-1\0'],
  ['10 000 characters', LONG],
  ['unicode', UNICODE],
];

const cli = (
  name: string,
  command: string,
  input: Input<string[]>,
  expectField?: Input<string>,
): BadInputCase => ({
  surface: 'cli',
  name: `rehome ${command}: ${name}`,
  command,
  input,
  expectField,
});

const wf = (
  name: string,
  command: string,
  input: Input<WorkflowArgument>,
  expectField?: Input<string>,
): BadInputCase => ({
  surface: 'workflow',
  name: `${command}: ${name}`,
  command,
  input,
  expectField,
});

const fxDirectory = (fx: BadInputFixture) => fx.directory;
const fxHost = (fx: BadInputFixture) => fx.hostId;
const spec = (fields: Record<string, unknown>) => ({ ...BAD_INPUT_FLEET, ...fields });

const FLEET_INIT_CASES: BadInputCase[] = [
  wf('null input', WorkflowType.fleetInit, null, 'fleet spec'),
  wf('a string', WorkflowType.fleetInit, 'three hosts', 'fleet spec'),
  wf('a list', WorkflowType.fleetInit, [3, 5], 'fleet spec'),
  wf('no hosts', WorkflowType.fleetInit, { instances: 2, volumeSizeBytes: MiB }, 'hosts'),
  wf('negative hosts', WorkflowType.fleetInit, spec({ hosts: -1 }), 'hosts'),
  wf('zero hosts', WorkflowType.fleetInit, spec({ hosts: 0 }), 'hosts'),
  wf('a billion hosts', WorkflowType.fleetInit, spec({ hosts: 1e9 }), 'hosts'),
  wf('hosts as a string', WorkflowType.fleetInit, spec({ hosts: '3' }), 'hosts'),
  wf('fractional instances', WorkflowType.fleetInit, spec({ instances: 2.5 }), 'instances'),
  wf('negative instances', WorkflowType.fleetInit, spec({ instances: -4 }), 'instances'),
  wf(
    'NaN volume size (null on the wire)',
    WorkflowType.fleetInit,
    spec({ volumeSizeBytes: NaN }),
    'volumeSizeBytes',
  ),
  wf('negative volume size', WorkflowType.fleetInit, spec({ volumeSizeBytes: -MiB }), 'volumeSizeBytes'),
  wf('volume size not whole MiB', WorkflowType.fleetInit, spec({ volumeSizeBytes: 100 }), 'volumeSizeBytes'),
  wf(
    'volume size over the limit',
    WorkflowType.fleetInit,
    spec({ volumeSizeBytes: MAX_VOLUME_BYTES + MiB }),
    'volumeSizeBytes',
  ),
  wf('volume size as a string', WorkflowType.fleetInit, spec({ volumeSizeBytes: '1MiB' }), 'volumeSizeBytes'),
  wf('an account with path traversal', WorkflowType.fleetInit, spec({ accounts: ['../x'] }), 'accounts[0]'),
  wf('no accounts', WorkflowType.fleetInit, spec({ accounts: [] }), 'accounts'),
  wf(
    'negative write rate',
    WorkflowType.fleetInit,
    spec({ workload: { writeBytesPerSec: -1, writeSize: 4096 } }),
    'writeBytesPerSec',
  ),
  wf(
    'write size not a sector multiple',
    WorkflowType.fleetInit,
    spec({ workload: { writeBytesPerSec: 0, writeSize: 3 } }),
    'writeSize',
  ),
  wf(
    'zero vCPU per instance',
    WorkflowType.fleetInit,
    spec({ instanceShape: { vcpu: 0, memoryMiB: 1024 } }),
    'instanceShape.vcpu',
  ),
  wf(
    'negative host capacity',
    WorkflowType.fleetInit,
    spec({ hostCapacity: { vcpu: -1, memoryMiB: 1, diskBytes: 1 } }),
    'hostCapacity.vcpu',
  ),
  wf('a second fleet in the same data dir', WorkflowType.fleetInit, BAD_INPUT_FLEET, 'fleet already exists'),
];

const LIVE_MIGRATION_CASES: BadInputCase[] = [
  wf('null input', WorkflowType.liveMigration, null, 'live migration input'),
  wf('no instance', WorkflowType.liveMigration, (fx) => ({ targetHostId: fx.otherHostId }), 'instanceId'),
  ...BAD_IDS.map(([what, id]) =>
    wf(
      `instance id with ${what}`,
      WorkflowType.liveMigration,
      (fx) => ({ instanceId: id, targetHostId: fx.otherHostId }),
      'instanceId',
    ),
  ),
  wf(
    'target with path traversal',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: '../h-1' }),
    'targetHostId',
  ),
  wf(
    'instance id as a number',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: 1, targetHostId: fx.otherHostId }),
    'instanceId',
  ),
  wf(
    'unknown instance',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: 'i-999', targetHostId: fx.otherHostId }),
    'i-999',
  ),
  wf(
    'unknown target host',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: 'h-999' }),
    'h-999',
  ),
  wf(
    'target is its own host',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: fx.hostId }),
    'already runs on',
  ),
  wf(
    'target without room',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: fx.fullHostId }),
    'free',
  ),
  wf(
    'negative bandwidth',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: fx.otherHostId, bandwidthBytesPerSec: -1 }),
    'bandwidth',
  ),
  wf(
    'fractional bandwidth',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: fx.otherHostId, bandwidthBytesPerSec: 1.5 }),
    'bandwidth',
  ),
  wf(
    'bandwidth as a string',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: fx.otherHostId, bandwidthBytesPerSec: '100' }),
    'bandwidth',
  ),
  wf(
    'snapshot flag as a string',
    WorkflowType.liveMigration,
    (fx) => ({ instanceId: fx.instanceId, targetHostId: fx.otherHostId, snapshot: 'yes' }),
    'snapshot',
  ),
];

const VOLUME_IMPORT_CASES: BadInputCase[] = [
  wf('null input', WorkflowType.volumeImport, null, 'volume import input'),
  wf('no path', WorkflowType.volumeImport, (fx) => ({ instanceId: fx.instanceId }), 'path'),
  wf(
    'relative path',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: '../x.img' }),
    'path',
  ),
  wf(
    'path with a NUL byte',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: `${fx.imageFile}\0` }),
    'path',
  ),
  wf(
    'path is a directory',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: fx.directory }),
    fxDirectory,
  ),
  wf(
    'missing file',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: `${fx.directory}/none.img` }),
    'none.img',
  ),
  wf(
    'empty file',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: fx.emptyFile }),
    'empty',
  ),
  wf(
    'size not a sector multiple',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: fx.oddSizeFile }),
    '1000 bytes',
  ),
  wf(
    'unknown instance',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: 'i-999', path: fx.imageFile }),
    'i-999',
  ),
  wf(
    'instance with path traversal',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: '../i-1', path: fx.imageFile }),
    'instanceId',
  ),
  wf(
    'workloadWrites as a string',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: fx.imageFile, workloadWrites: 'yes' }),
    'workloadWrites',
  ),
  wf(
    "another instance's image (another account's data)",
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: fx.otherImagePath }),
    "rehome's own data",
  ),
  wf(
    'the inventory database',
    WorkflowType.volumeImport,
    (fx) => ({ instanceId: fx.instanceId, path: path.join(fx.dataDir, INVENTORY_FILE) }),
    "rehome's own data",
  ),
];

const VOLUME_EXPORT_CASES: BadInputCase[] = [
  wf('null input', WorkflowType.volumeExport, null, 'volume export input'),
  wf(
    'volume with path traversal',
    WorkflowType.volumeExport,
    (fx) => ({ volumeId: '../x', path: `${fx.directory}/out.img` }),
    'volumeId',
  ),
  wf(
    'unknown volume to /etc/passwd',
    WorkflowType.volumeExport,
    { volumeId: 'i-999-v0', path: '/etc/passwd' },
    'i-999-v0',
  ),
  wf(
    'relative path',
    WorkflowType.volumeExport,
    (fx) => ({ volumeId: fx.volumeId, path: 'out.img' }),
    'path',
  ),
  wf(
    'path with a NUL byte',
    WorkflowType.volumeExport,
    (fx) => ({ volumeId: fx.volumeId, path: `${fx.directory}/out\0.img` }),
    'path',
  ),
  wf(
    'path in a missing directory',
    WorkflowType.volumeExport,
    (fx) => ({ volumeId: fx.volumeId, path: `${fx.directory}/no/such/dir/out.img` }),
    'directory',
  ),
  wf(
    'path is a directory',
    WorkflowType.volumeExport,
    (fx) => ({ volumeId: fx.volumeId, path: fx.directory }),
    'directory',
  ),
  wf(
    "over another instance's image",
    WorkflowType.volumeExport,
    (fx) => ({ volumeId: fx.volumeId, path: fx.otherImagePath }),
    "rehome's own data",
  ),
  wf(
    'over the inventory database',
    WorkflowType.volumeExport,
    (fx) => ({ volumeId: fx.volumeId, path: path.join(fx.dataDir, INVENTORY_FILE) }),
    "rehome's own data",
  ),
  wf('path as a number', WorkflowType.volumeExport, (fx) => ({ volumeId: fx.volumeId, path: 42 }), 'path'),
];

const SNAPSHOT_CASES: BadInputCase[] = [
  wf('null input', WorkflowType.preMigrationSnapshot, null, 'snapshot input'),
  ...BAD_IDS.map(([what, id]) =>
    wf(`instance id with ${what}`, WorkflowType.preMigrationSnapshot, { instanceId: id }, 'instanceId'),
  ),
  wf('unknown instance', WorkflowType.preMigrationSnapshot, { instanceId: 'i-999' }, 'i-999'),
  wf(
    'wrong account',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, account: fx.otherAccount }),
    'account',
  ),
  wf(
    'account with path traversal',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, account: '../acct-1' }),
    'account',
  ),
  wf(
    'event with path traversal',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, event: '../../etc/passwd' }),
    'event',
  ),
  wf(
    'event of 300 characters',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, event: 'e'.repeat(300) }),
    'event',
  ),
  wf(
    'event as a number',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, event: 42 }),
    'event',
  ),
  wf(
    'keepLast 0',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, keepLast: 0 }),
    'keepLast',
  ),
  wf(
    'negative keepLast',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, keepLast: -1 }),
    'keepLast',
  ),
  wf(
    'keepLast over the limit',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, keepLast: 1001 }),
    'keepLast',
  ),
  wf(
    'keepLast as a string',
    WorkflowType.preMigrationSnapshot,
    (fx) => ({ instanceId: fx.instanceId, keepLast: '3' }),
    'keepLast',
  ),
];

const RESTORE_CASES: BadInputCase[] = [
  wf('null input', WorkflowType.restoreInstance, null, 'restore input'),
  wf('no account', WorkflowType.restoreInstance, (fx) => ({ snapshotIds: [fx.snapshotId] }), 'account'),
  wf(
    'account with path traversal',
    WorkflowType.restoreInstance,
    (fx) => ({ account: '../acct-1', snapshotIds: [fx.snapshotId] }),
    'account',
  ),
  wf(
    'wrong account',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.otherAccount, snapshotIds: [fx.snapshotId] }),
    'account',
  ),
  wf(
    'no snapshots',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: [] }),
    'snapshotIds',
  ),
  wf(
    'snapshot ids as a string',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: fx.snapshotId }),
    'snapshotIds',
  ),
  wf(
    '65 snapshot ids',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: Array.from({ length: 65 }, (_, n) => `snap-${n}`) }),
    'snapshotIds',
  ),
  wf(
    'snapshot id with path traversal',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: ['../snap'] }),
    'snapshotIds[0]',
  ),
  wf(
    'snapshot id with a NUL byte',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: ['snap\0'] }),
    'snapshotIds[0]',
  ),
  wf(
    'unknown snapshot',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: ['snap-none'] }),
    'snap-none',
  ),
  wf(
    'unknown target host',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: [fx.snapshotId], targetHostId: 'h-999' }),
    'h-999',
  ),
  wf(
    'target is its own host',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: [fx.snapshotId], targetHostId: fx.hostId }),
    fxHost,
  ),
  wf(
    'target with path traversal',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: [fx.snapshotId], targetHostId: '../h-1' }),
    'targetHostId',
  ),
  wf(
    'avoidHostIds as a string',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: [fx.snapshotId], avoidHostIds: 'h-1' }),
    'avoidHostIds',
  ),
  wf(
    'reason of 500 characters',
    WorkflowType.restoreInstance,
    (fx) => ({ account: fx.account, snapshotIds: [fx.snapshotId], reason: 'r'.repeat(500) }),
    'reason',
  ),
];

const DELETE_SNAPSHOT_CASES: BadInputCase[] = [
  wf('null input', WorkflowType.deleteSnapshot, null, 'delete snapshot input'),
  wf('no snapshot id', WorkflowType.deleteSnapshot, (fx) => ({ account: fx.account }), 'snapshotId'),
  wf(
    'snapshot id with path traversal',
    WorkflowType.deleteSnapshot,
    (fx) => ({ account: fx.account, snapshotId: '../../object-store' }),
    'snapshotId',
  ),
  wf(
    'account with a NUL byte',
    WorkflowType.deleteSnapshot,
    (fx) => ({ account: 'acct-1\0', snapshotId: fx.snapshotId }),
    'account',
  ),
  wf(
    'unknown snapshot',
    WorkflowType.deleteSnapshot,
    (fx) => ({ account: fx.account, snapshotId: 'snap-none' }),
    'snap-none',
  ),
  wf(
    'wrong account',
    WorkflowType.deleteSnapshot,
    (fx) => ({ account: fx.otherAccount, snapshotId: fx.snapshotId }),
    'account',
  ),
];

const fleetInitArgs = (hosts: string, instances: string, size: string, ...more: string[]) => [
  'fleet',
  'init',
  '--hosts',
  hosts,
  '--instances',
  instances,
  '--volume-size',
  size,
  ...more,
];

const CLI_CASES: BadInputCase[] = [
  cli('negative hosts', 'fleet init', fleetInitArgs('-1', '2', '1MiB'), '--hosts'),
  cli('hosts not a number', 'fleet init', fleetInitArgs('abc', '2', '1MiB'), '--hosts'),
  cli('too many hosts', 'fleet init', fleetInitArgs('300', '2', '1MiB', '--wait'), 'hosts'),
  cli('negative volume size', 'fleet init', fleetInitArgs('2', '2', '-5MiB'), '--volume-size'),
  cli('volume size not whole bytes', 'fleet init', fleetInitArgs('2', '2', '1.3KiB'), '--volume-size'),
  cli('volume size far too large', 'fleet init', fleetInitArgs('2', '2', '99999999TiB'), '--volume-size'),
  cli('volume size of 100 bytes', 'fleet init', fleetInitArgs('2', '2', '100', '--wait'), 'volumeSizeBytes'),
  cli(
    'write rate not a size',
    'fleet init',
    fleetInitArgs('2', '2', '1MiB', '--write-rate', 'fast'),
    '--write-rate',
  ),
  cli(
    'missing --hosts',
    'fleet init',
    ['fleet', 'init', '--instances', '2', '--volume-size', '1MiB'],
    '--hosts',
  ),
  cli('a second fleet', 'fleet init', fleetInitArgs('2', '2', '1MiB', '--wait'), 'fleet already exists'),
  cli('unexpected argument', 'fleet list', ['fleet', 'list', '../x'], 'too many arguments'),
  cli(
    'data dir without a fleet',
    'fleet list',
    (fx) => ['fleet', 'list', '--data-dir', fx.directory],
    'no fleet',
  ),
  ...BAD_IDS.filter(([what]) => what !== 'a NUL byte').map(([what, id]) =>
    cli(`id with ${what}`, 'fleet show', ['fleet', 'show', id], 'id'),
  ),
  cli('unknown id', 'fleet show', ['fleet', 'show', 'h-999'], 'h-999'),
  cli('unexpected argument', 'fleet check', ['fleet', 'check', 'h-1'], 'too many arguments'),
  cli(
    'data dir without a fleet',
    'fleet check',
    ['fleet', 'check', '--data-dir', '/nonexistent-rehome'],
    'no fleet',
  ),
  cli(
    'instance with path traversal',
    'migrate',
    (fx) => ['migrate', '../x', '--to', fx.otherHostId],
    'instance id',
  ),
  cli(
    'target is /etc/passwd',
    'migrate',
    (fx) => ['migrate', fx.instanceId, '--to', '/etc/passwd'],
    'target host id',
  ),
  cli('unknown instance', 'migrate', (fx) => ['migrate', 'i-999', '--to', fx.otherHostId], 'i-999'),
  cli('unknown target', 'migrate', (fx) => ['migrate', fx.instanceId, '--to', 'h-999'], 'h-999'),
  cli(
    'target is its own host',
    'migrate',
    (fx) => ['migrate', fx.instanceId, '--to', fx.hostId, '--wait'],
    'already runs on',
  ),
  cli(
    'target without room',
    'migrate',
    (fx) => ['migrate', fx.instanceId, '--to', fx.fullHostId, '--wait'],
    'free',
  ),
  cli(
    'negative bandwidth',
    'migrate',
    (fx) => ['migrate', fx.instanceId, '--to', fx.otherHostId, '--bandwidth', '-5MiB'],
    '--bandwidth',
  ),
  cli('missing --to', 'migrate', (fx) => ['migrate', fx.instanceId], '--to'),
  cli('unknown workflow', 'status', ['status', 'migrate-i-1-to-h-2-none'], 'migrate-i-1-to-h-2-none'),
  cli('workflow id of 10 000 characters', 'status', ['status', LONG], 'aaaa'),
  cli('missing workflow id', 'status', ['status'], 'workflowId'),
  cli(
    'image is a directory',
    'volume import',
    (fx) => ['volume', 'import', fx.directory, '--instance', fx.instanceId],
    fxDirectory,
  ),
  cli(
    'image does not exist',
    'volume import',
    (fx) => ['volume', 'import', '/nonexistent-rehome.img', '--instance', fx.instanceId],
    'nonexistent-rehome.img',
  ),
  cli(
    'empty image',
    'volume import',
    (fx) => ['volume', 'import', fx.emptyFile, '--instance', fx.instanceId],
    'empty',
  ),
  cli(
    'image size not a sector multiple',
    'volume import',
    (fx) => ['volume', 'import', fx.oddSizeFile, '--instance', fx.instanceId],
    '1000 bytes',
  ),
  cli(
    'unknown instance',
    'volume import',
    (fx) => ['volume', 'import', fx.imageFile, '--instance', 'i-999'],
    'i-999',
  ),
  cli(
    'instance with path traversal',
    'volume import',
    (fx) => ['volume', 'import', fx.imageFile, '--instance', '../i-1'],
    'instance id',
  ),
  cli(
    "another instance's image",
    'volume import',
    (fx) => ['volume', 'import', fx.otherImagePath, '--instance', fx.instanceId],
    "rehome's own data",
  ),
  cli(
    'unknown volume',
    'volume export',
    (fx) => ['volume', 'export', 'i-999-v0', `${fx.directory}/out.img`],
    'i-999-v0',
  ),
  cli(
    'volume with path traversal',
    'volume export',
    (fx) => ['volume', 'export', '../x', `${fx.directory}/out.img`],
    'volume id',
  ),
  cli(
    'missing directory',
    'volume export',
    (fx) => ['volume', 'export', fx.volumeId, '/nonexistent-rehome/out.img'],
    'not a directory',
  ),
  cli(
    "over another instance's image",
    'volume export',
    (fx) => ['volume', 'export', fx.volumeId, fx.otherImagePath],
    "rehome's own data",
  ),
  cli('instance with path traversal', 'snapshot create', ['snapshot', 'create', '../x'], 'instance id'),
  cli('unknown instance', 'snapshot create', ['snapshot', 'create', 'i-999'], 'i-999'),
  cli(
    'wrong account',
    'snapshot create',
    (fx) => ['snapshot', 'create', fx.instanceId, '--account', fx.otherAccount],
    'account',
  ),
  cli('--keep 0', 'snapshot create', (fx) => ['snapshot', 'create', fx.instanceId, '--keep', '0'], '--keep'),
  cli(
    '--keep over the limit',
    'snapshot create',
    (fx) => ['snapshot', 'create', fx.instanceId, '--keep', '1001'],
    '--keep',
  ),
  cli(
    'event with path traversal',
    'snapshot create',
    (fx) => ['snapshot', 'create', fx.instanceId, '--event', '../../etc'],
    '--event',
  ),
  cli('account with uppercase', 'snapshot list', ['snapshot', 'list', '--account', 'Acct_1'], '--account'),
  cli('missing --account', 'snapshot list', ['snapshot', 'list'], '--account'),
  cli(
    'volume is /etc/passwd',
    'snapshot list',
    (fx) => ['snapshot', 'list', '--account', fx.account, '--volume', '/etc/passwd'],
    '--volume',
  ),
  cli(
    'snapshot with path traversal',
    'snapshot show',
    (fx) => ['snapshot', 'show', '../x', '--account', fx.account],
    'snapshot id',
  ),
  cli(
    'unknown snapshot',
    'snapshot show',
    (fx) => ['snapshot', 'show', 'snap-none', '--account', fx.account],
    'snap-none',
  ),
  cli(
    'wrong account',
    'snapshot show',
    (fx) => ['snapshot', 'show', fx.snapshotId, '--account', fx.otherAccount],
    'account',
  ),
  cli(
    'wrong account',
    'snapshot delete',
    (fx) => ['snapshot', 'delete', fx.snapshotId, '--account', fx.otherAccount],
    'account',
  ),
  cli(
    'unknown snapshot',
    'snapshot delete',
    (fx) => ['snapshot', 'delete', 'snap-none', '--account', fx.account],
    'snap-none',
  ),
  cli(
    'snapshot with path traversal',
    'snapshot delete',
    (fx) => ['snapshot', 'delete', '../x', '--account', fx.account],
    'snapshot id',
  ),
  cli(
    'wrong account',
    'restore',
    (fx) => ['restore', fx.snapshotId, '--account', fx.otherAccount],
    'account',
  ),
  cli('unknown snapshot', 'restore', (fx) => ['restore', 'snap-none', '--account', fx.account], 'snap-none'),
  cli(
    'unknown host',
    'restore',
    (fx) => ['restore', fx.snapshotId, '--account', fx.account, '--host', 'h-999'],
    'h-999',
  ),
  cli(
    'host with path traversal',
    'restore',
    (fx) => ['restore', fx.snapshotId, '--account', fx.account, '--host', '../h-1'],
    '--host',
  ),
  cli(
    'onto its own host',
    'restore',
    (fx) => ['restore', fx.snapshotId, '--account', fx.account, '--host', fx.hostId, '--wait'],
    fxHost,
  ),
  cli(
    'the same snapshot twice',
    'restore',
    (fx) => ['restore', fx.snapshotId, fx.snapshotId, '--account', fx.account],
    'twice',
  ),
  cli(
    '65 snapshots',
    'restore',
    (fx) => ['restore', ...Array.from({ length: 65 }, (_, n) => `snap-${n}`), '--account', fx.account],
    '65',
  ),
];

export const BAD_INPUT_CASES: BadInputCase[] = [
  ...FLEET_INIT_CASES,
  ...LIVE_MIGRATION_CASES,
  ...VOLUME_IMPORT_CASES,
  ...VOLUME_EXPORT_CASES,
  ...SNAPSHOT_CASES,
  ...RESTORE_CASES,
  ...DELETE_SNAPSHOT_CASES,
  ...CLI_CASES,
];

// ---- runner ------------------------------------------------------------------------------------

const ROOT = path.resolve(__dirname, '../..');
const ERROR_TYPES: string[] = Object.values(ErrorType);
/** A line of a stack trace, as Node prints them. */
const STACK_LINE = /^\s+at /m;

function resolve<T>(input: Input<T>, fx: BadInputFixture): T {
  return typeof input === 'function' ? (input as (fx: BadInputFixture) => T)(fx) : input;
}

/** Runs every case against the cluster; see the top of this file. */
export async function runBadInputs(
  cluster: BadInputCluster,
  options: RunBadInputsOptions = {},
): Promise<BadInputReport> {
  const cases = options.cases ?? BAD_INPUT_CASES;
  const log = options.log ?? (() => undefined);
  const inventory = openInventory(cluster.dataDir);
  /**
   * A fresh connection each time: one opened before a case keeps reading the old file if the case
   * replaced inventory.db, and would not see that.
   */
  const fingerprint = () => {
    let fresh: Inventory | undefined;
    try {
      fresh = openInventory(cluster.dataDir);
      return dataFingerprint(cluster.dataDir, fresh);
    } catch (err) {
      return `unreadable: ${(err as Error).message}`;
    } finally {
      fresh?.close();
    }
  };
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-bad-inputs-'));
  try {
    const fx = await prepareFixture(cluster, inventory, scratch);
    const unclear: BadInputReport['unclear'] = [];
    const fingerprintBefore = fingerprint();
    let last = fingerprintBefore;
    /** Blames the cases just run when the data changed under them. */
    const checkUnchanged = (ran: BadInputCase[]) => {
      const now = fingerprint();
      if (now === last) return;
      for (const c of ran) {
        const others = ran.filter((o) => o !== c).map((o) => o.name);
        unclear.push({
          case: c,
          why: `the inventory, an image or the snapshot store changed while it ran${others.length ? ` (with ${others.join('; ')})` : ''}`,
        });
      }
      last = now;
    };

    const record = (c: BadInputCase, outcome: CaseOutcome) => {
      if (outcome.why) unclear.push({ case: c, why: outcome.why });
      log(outcome.why ? `UNCLEAR ${c.name}: ${outcome.why}` : `ok ${c.name} → ${outcome.message}`);
    };

    // Workflows one at a time (each fails in well under a second), so a change of data is pinned on its case.
    const timeoutMs = options.workflowTimeoutMs ?? 15_000;
    let n = 0;
    for (const c of cases.filter((x) => x.surface === 'workflow')) {
      const workflowId = `bad-input-${++n}-${Date.now().toString(36)}`;
      record(c, await runWorkflowCase(cluster.client, c, fx, workflowId, timeoutMs));
      checkUnchanged([c]);
    }

    // CLI cases over a few long-lived CLI processes; a change of data is blamed on the cases in flight.
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      TEMPORAL_ADDRESS: cluster.server.address,
      TEMPORAL_NAMESPACE: cluster.server.namespace,
      REHOME_DATA_DIR: cluster.dataDir,
    };
    const queue = cases.filter((x) => x.surface === 'cli');
    const inFlight = new Set<BadInputCase>();
    const cliWorker = async () => {
      const child = new CliChild(env);
      try {
        for (let c = queue.shift(); c; c = queue.shift()) {
          inFlight.add(c);
          record(c, await runCliCase(child, c, fx));
          checkUnchanged([c, ...[...inFlight].filter((o) => o !== c)]);
          inFlight.delete(c);
        }
      } finally {
        child.close();
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, options.cliConcurrency ?? 2) }, cliWorker));
    const fingerprintAfter = fingerprint();
    return {
      tried: cases.length,
      unclear,
      fingerprintBefore,
      fingerprintAfter,
      changed: fingerprintAfter !== fingerprintBefore,
    };
  } finally {
    inventory.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

/** What a case printed or failed with, and why it is unclear (undefined: it is clear). */
interface CaseOutcome {
  why?: string;
  message: string;
}

const unclearBecause = (why: string): CaseOutcome => ({ why, message: '' });

async function runWorkflowCase(
  client: Client,
  c: BadInputCase,
  fx: BadInputFixture,
  workflowId: string,
  timeoutMs: number,
): Promise<CaseOutcome> {
  const handle = await client.workflow.start(c.command, {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId,
    args: [resolve(c.input, fx)],
  });
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<'timeout'>((done) => {
    timer = setTimeout(() => done('timeout'), timeoutMs);
  });
  const outcome = await Promise.race([
    handle.result().then(
      (result: unknown) => ({ ok: true as const, result }),
      (err: unknown) => ({ ok: false as const, err }),
    ),
    timedOut,
  ]).finally(() => clearTimeout(timer));
  if (outcome === 'timeout') {
    await handle.terminate('bad-input case timed out').catch(() => undefined);
    return unclearBecause(
      `did not fail within ${timeoutMs} ms (a retryable error, or a workflow task failing over and over)`,
    );
  }
  if (outcome.ok)
    return unclearBecause(`succeeded instead of failing: ${JSON.stringify(outcome.result).slice(0, 200)}`);
  const err = outcome.err;
  if (!(err instanceof WorkflowFailedError)) return unclearBecause(`failed with ${String(err)}`);
  const cause = err.cause;
  const failure = cause instanceof ApplicationFailure ? cause : cause?.cause;
  if (!(failure instanceof ApplicationFailure)) {
    return unclearBecause(
      `failed with ${cause?.constructor.name ?? 'nothing'} (${cause?.message ?? ''}), not an ApplicationFailure`,
    );
  }
  if (!ERROR_TYPES.includes(failure.type ?? ''))
    return unclearBecause(`failure type ${failure.type} is not one of ${ERROR_TYPES.join(', ')}`);
  if (!failure.nonRetryable) return unclearBecause(`failure ${failure.type} is retryable`);
  return { why: messageProblem(failure.message, c, fx), message: failure.message };
}

/**
 * A Node process running the rehome CLI (src/cli.ts `main`, as bin/rehome.js does) once per line
 * of argv it is sent, answering with the exit code and what the run wrote to stdout and stderr. One
 * process serves many cases: a Node start per case would cost more than the cases themselves.
 */
const CLI_CHILD = `
const path = require('node:path');
const root = process.argv[1];
let swc = true;
try { require.resolve('@swc/core', { paths: [root] }); } catch { swc = false; }
require(require.resolve('ts-node', { paths: [root] })).register({
  transpileOnly: true, swc, project: path.join(root, 'tsconfig.json'),
});
const { main } = require(path.join(root, 'src', 'cli.ts'));
const answer = process.stdout.write.bind(process.stdout);
let current;
const capture = (key) => (chunk, ...rest) => {
  if (current) current[key] += String(chunk);
  const done = rest.find((r) => typeof r === 'function');
  if (done) done();
  return true;
};
process.stdout.write = capture('stdout');
process.stderr.write = capture('stderr');
process.on('unhandledRejection', (err) => {
  if (current) current.stderr += 'unhandled rejection: ' + ((err && err.stack) || err) + '\\n';
});
require('node:readline').createInterface({ input: process.stdin }).on('line', async (line) => {
  current = { stdout: '', stderr: '' };
  let code;
  try {
    code = await main(['node', 'rehome', ...JSON.parse(line)]);
  } catch (err) {
    current.stderr += 'main threw: ' + ((err && err.stack) || err) + '\\n';
    code = 99;
  }
  const result = { code, ...current };
  current = undefined;
  answer(JSON.stringify(result) + '\\n');
});
`;

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

class CliChild {
  private readonly child: ChildProcess;
  private readonly lines: AsyncIterator<string>;
  private stderr = '';

  constructor(env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, ['-e', CLI_CHILD, ROOT], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr!.on('data', (chunk: Buffer) => void (this.stderr += chunk.toString()));
    this.lines = readline.createInterface({ input: this.child.stdout! })[Symbol.asyncIterator]();
  }

  /** Runs `rehome <args>`; fails (rather than hangs) after timeoutMs. */
  async run(args: string[], timeoutMs: number): Promise<CliResult> {
    this.child.stdin!.write(`${JSON.stringify(args)}\n`);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`did not finish within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      const next = await Promise.race([this.lines.next(), timedOut]);
      if (next.done) throw new Error(`the CLI process exited: ${this.stderr.trim().slice(0, 500)}`);
      return JSON.parse(next.value) as CliResult;
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.child.stdin!.end();
    this.child.kill();
  }
}

async function runCliCase(child: CliChild, c: BadInputCase, fx: BadInputFixture): Promise<CaseOutcome> {
  let result: CliResult;
  try {
    result = await child.run(resolve(c.input, fx) as string[], 60_000);
  } catch (err) {
    return unclearBecause((err as Error).message);
  }
  if (result.code === 0) return unclearBecause(`exited 0: ${result.stdout.trim().split('\n')[0] ?? ''}`);
  const lines = result.stderr.split('\n').filter((l) => l.trim() !== '');
  if (lines.length !== 1)
    return unclearBecause(`printed ${lines.length} lines on stderr: ${lines.slice(0, 3).join(' | ')}`);
  if (!lines[0].startsWith('rehome: '))
    return unclearBecause(`stderr does not start with "rehome: ": ${lines[0]}`);
  if (STACK_LINE.test(result.stdout)) return unclearBecause('printed a stack trace on stdout');
  return { why: messageProblem(lines[0], c, fx), message: lines[0] };
}

function messageProblem(message: string, c: BadInputCase, fx: BadInputFixture): string | undefined {
  if (message.includes('\n'))
    return `message has several lines: ${message.split('\n').slice(0, 3).join(' | ')}`;
  if (STACK_LINE.test(message) || / at .*\.(ts|js):\d+/.test(message))
    return `message holds a stack trace: ${message}`;
  if (message.length > 1000) return `message is ${message.length} characters long (the bad value is not cut)`;
  const field = c.expectField === undefined ? undefined : resolve(c.expectField, fx);
  if (field !== undefined && !message.toLowerCase().includes(field.toLowerCase())) {
    return `message does not name ${JSON.stringify(field)}: ${message}`;
  }
  return undefined;
}

/** The fleet (created if there is none), one snapshot, and files outside the data dir. */
async function prepareFixture(
  cluster: BadInputCluster,
  inventory: Inventory,
  scratch: string,
): Promise<BadInputFixture> {
  if (inventory.listHosts().length === 0) {
    await cluster.client.workflow.execute(WorkflowType.fleetInit, {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: `bad-input-fleet-${Date.now().toString(36)}`,
      args: [BAD_INPUT_FLEET],
    });
  }
  const instances = inventory.listInstances();
  const instance = instances.find(
    (i) => i.state === 'running' && inventory.listVolumes({ instanceId: i.instanceId }).length > 0,
  );
  if (!instance) throw new Error('the bad-input table needs a running instance with a volume');
  const volume = inventory.listVolumes({ instanceId: instance.instanceId })[0];
  const other = instances.find(
    (i) =>
      i.instanceId !== instance.instanceId && inventory.listVolumes({ instanceId: i.instanceId }).length > 0,
  );
  if (!other) throw new Error('the bad-input table needs a second instance with a volume');
  const otherVolume = inventory.listVolumes({ instanceId: other.instanceId })[0];
  const hosts = inventory.hostLoads().filter((h) => h.hostId !== instance.hostId);
  if (hosts.length === 0) throw new Error('the bad-input table needs a second host');
  const full = hosts.find((h) => h.capacity.vcpu - h.used.vcpu < instance.shape.vcpu);
  const roomy = hosts.find((h) => h !== full) ?? hosts[0];
  const accounts = new Set(instances.map((i) => i.account));
  const otherAccount = [...accounts].find((a) => a !== instance.account) ?? 'acct-nobody';

  const snapshot = (await cluster.client.workflow.execute(WorkflowType.preMigrationSnapshot, {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId: `bad-input-snapshot-${Date.now().toString(36)}`,
    args: [{ instanceId: instance.instanceId, account: instance.account, event: 'manual' }],
  })) as PreMigrationSnapshotResult;
  if (snapshot.snapshots.length === 0) throw new Error(`no snapshot of ${instance.instanceId} was taken`);

  const file = (name: string, bytes: number) => {
    const f = path.join(scratch, name);
    fs.writeFileSync(f, Buffer.alloc(bytes, 7));
    return f;
  };
  const directory = path.join(scratch, 'a-directory');
  fs.mkdirSync(directory);
  return {
    dataDir: cluster.dataDir,
    instanceId: instance.instanceId,
    hostId: instance.hostId,
    account: instance.account,
    volumeId: volume.volumeId,
    otherAccount,
    otherInstanceId: other.instanceId,
    otherImagePath: new HostStore(cluster.dataDir, otherVolume.hostId).imagePath(otherVolume.volumeId),
    otherHostId: roomy.hostId,
    fullHostId: (full ?? roomy).hostId,
    snapshotId: snapshot.snapshots[0].snapshotId,
    emptyFile: file('empty.img', 0),
    oddSizeFile: file('odd.img', 1000),
    imageFile: file('disk.img', MiB),
    directory,
  };
}
