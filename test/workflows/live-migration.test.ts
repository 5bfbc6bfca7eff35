import { WorkflowUpdateFailedError } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import {
  AccountKey,
  CONTROL_TASK_QUEUE,
  DEFAULT_BLOCK_SIZE,
  ErrorType,
  hostTaskQueue,
  HostIdKey,
  InstanceIdKey,
  invalidState,
  MiB,
  notFound,
  OperationKey,
  PhaseKey,
  progressQuery,
  setBandwidthUpdate,
  WorkflowType,
  type LiveMigrationInput,
  type SyncSliceInput,
} from '../../src/contracts';
import type { liveMigration } from '../../src/workflows';
import { expectApplicationFailure } from '../helpers/failures';
import { currentDetails, deferred, eventually, failureOf, useTestBed } from '../helpers/workflow-harness';

const bed = useTestBed();
const startMigration = (input: LiveMigrationInput) =>
  bed.start<typeof liveMigration>(WorkflowType.liveMigration, input);

const host = (id: string) => hostTaskQueue(id);
const BLOCK = DEFAULT_BLOCK_SIZE;

describe('liveMigration happy path', () => {
  it('runs the phases in order on the right queues and reports the result', async () => {
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2', bandwidthBytesPerSec: 0 });
    const result = await handle.result();

    expect(bed.mocks.calls.map((c) => `${c.name}@${c.taskQueue}`)).toEqual([
      `planMigration@${CONTROL_TASK_QUEUE}`,
      `reserveCapacity@${CONTROL_TASK_QUEUE}`,
      `prepareTarget@${host('h-2')}`,
      // The pre-migration snapshot (a child workflow) of both instance-store volumes, on the source.
      `planSnapshot@${CONTROL_TASK_QUEUE}`,
      `snapshotVolume@${host('h-1')}`,
      `snapshotVolume@${host('h-1')}`,
      `retainSnapshots@${CONTROL_TASK_QUEUE}`,
      `retainSnapshots@${CONTROL_TASK_QUEUE}`,
      `switchToTarget@${host('h-2')}`,
      `syncVolumeSlice@${host('h-2')}`,
      `syncVolumeSlice@${host('h-2')}`,
      `syncVolumeSlice@${host('h-2')}`,
      `verifyVolume@${host('h-2')}`,
      `verifyVolume@${host('h-2')}`,
      `finalizeTarget@${host('h-2')}`,
      `releaseSource@${host('h-1')}`,
      `commitMigration@${CONTROL_TASK_QUEUE}`,
      // Not asked to keep it: the snapshot goes once the migration has committed.
      `deleteSnapshot@${CONTROL_TASK_QUEUE}`,
      `deleteSnapshot@${CONTROL_TASK_QUEUE}`,
    ]);
    const snapshotIds = bed.mocks
      .callsTo('snapshotVolume')
      .map((c) => (c.input as { snapshotId: string }).snapshotId);
    expect(bed.mocks.callsTo('snapshotVolume')[0].input).toMatchObject({
      account: 'acme',
      instanceId: 'i-3',
      volumeId: 'v-i-3-a',
      event: `migration:${handle.workflowId}`,
    });
    expect(bed.mocks.callsTo('deleteSnapshot').map((c) => c.input)).toEqual(
      snapshotIds.map((snapshotId) => ({ account: 'acme', snapshotId })),
    );
    expect(bed.mocks.callsTo('reserveCapacity')[0].input).toMatchObject({
      key: handle.workflowId,
      hostId: 'h-2',
      instanceId: 'i-3',
    });
    expect(bed.mocks.callsTo('syncVolumeSlice')[0].input).toMatchObject({
      migrationId: handle.workflowId,
      volumeId: 'v-i-3-a',
      sourceHostId: 'h-1',
      bandwidthBytesPerSec: 0,
      maxSliceMs: 5000,
    });
    expect(bed.mocks.callsTo('commitMigration')[0].input).toEqual({
      key: handle.workflowId,
      instanceId: 'i-3',
      sourceHostId: 'h-1',
      targetHostId: 'h-2',
    });

    expect(result).toMatchObject({
      instanceId: 'i-3',
      account: 'acme',
      sourceHostId: 'h-1',
      targetHostId: 'h-2',
      downtimeMs: 7,
      bytesCopied: 96 * BLOCK,
      bytesReadThrough: 6 * BLOCK,
      blocksVerified: 92,
      blocksWrittenOnTarget: 4,
      cancelRefused: false,
    });
    expect(result.durationMs).toBeGreaterThanOrEqual(0);
    expect(Object.keys(result.phaseMs ?? {})).toEqual(
      expect.arrayContaining([
        'validating',
        'reserving',
        'instantiating',
        'snapshotting',
        'switching',
        'syncing',
        'verifying',
      ]),
    );
  });

  it('answers the progress query and shows the phase as search attribute and current details', async () => {
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    await handle.result();

    const progress = await handle.query(progressQuery);
    expect(progress).toMatchObject({
      phase: 'completed',
      instanceId: 'i-3',
      sourceHostId: 'h-1',
      targetHostId: 'h-2',
      blocksDone: 96,
      blocksTotal: 96,
      bytesCopied: 96 * BLOCK,
      bytesTotal: 6 * MiB,
      etaSeconds: 0,
      switched: true,
      cancelRefused: false,
    });

    const attributes = (await handle.describe()).typedSearchAttributes;
    expect(attributes.get(PhaseKey)).toBe('completed');
    expect(attributes.get(InstanceIdKey)).toBe('i-3');
    expect(attributes.get(HostIdKey)).toBe('h-2');
    expect(attributes.get(AccountKey)).toBe('acme');
    expect(attributes.get(OperationKey)).toBe('live-migration');
    expect(await currentDetails(bed.client, handle.workflowId)).toMatch(/^\*\*completed\*\* i-3 h-1 → h-2: /);
  });

  it('reports block progress while the sync runs', async () => {
    const entered = deferred();
    const release = deferred();
    let slices = 0;
    bed.mocks.overrides.syncVolumeSlice = async (input) => {
      slices += 1;
      if (slices === 2) {
        entered.resolve();
        await release.promise;
      }
      return bed.mocks.defaults.syncVolumeSlice(input);
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    await entered.promise;
    const during = await handle.query(progressQuery);
    expect(during).toMatchObject({ phase: 'syncing', switched: true, blocksDone: 32, blocksTotal: 96 });
    expect(during.bytesCopied).toBe(32 * BLOCK);
    expect(await currentDetails(bed.client, handle.workflowId)).toMatch(
      /^\*\*syncing\*\* i-3 h-1 → h-2: 32\/96 blocks/,
    );
    release.resolve();
    await handle.result();
    expect((await handle.query(progressQuery)).blocksDone).toBe(96);
  });
});

describe('liveMigration setBandwidth update', () => {
  it('reaches the running copy, applies to later slices, and rejects bad values', async () => {
    const entered = deferred();
    const release = deferred();
    bed.mocks.overrides.syncVolumeSlice = async () => {
      if (bed.mocks.callsTo('syncVolumeSlice').length === 1) {
        entered.resolve();
        await release.promise;
      }
      return {
        done: true,
        blocksDone: 1,
        blocksTotal: 1,
        bytesCopied: BLOCK,
        bytesReadThrough: 0,
        bytesRecopied: 0,
      };
    };
    const handle = await startMigration({
      instanceId: 'i-3',
      targetHostId: 'h-2',
      bandwidthBytesPerSec: 1000,
    });
    await entered.promise;

    expect(await handle.executeUpdate(setBandwidthUpdate, { args: [8 * MiB] })).toBe(8 * MiB);
    const applied = bed.mocks.callsTo('setSyncBandwidth');
    expect(applied).toHaveLength(1);
    expect(applied[0].taskQueue).toBe(host('h-2'));
    expect(applied[0].input).toEqual({ migrationId: handle.workflowId, bytesPerSec: 8 * MiB });
    expect((await handle.query(progressQuery)).bandwidthBytesPerSec).toBe(8 * MiB);

    for (const bad of [-1, 1.5, '100' as unknown as number]) {
      const err = await handle.executeUpdate(setBandwidthUpdate, { args: [bad] }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
      expect(((err as WorkflowUpdateFailedError).cause as Error).message).toMatch(
        /whole bytes per second >= 0/,
      );
    }
    expect(bed.mocks.callsTo('setSyncBandwidth')).toHaveLength(1);

    release.resolve();
    await handle.result();
    const slices = bed.mocks
      .callsTo('syncVolumeSlice')
      .map((c) => (c.input as SyncSliceInput).bandwidthBytesPerSec);
    expect(slices[0]).toBe(1000);
    expect(slices.slice(1)).toEqual([8 * MiB]);
  });
});

describe('liveMigration before the switch', () => {
  it('rolls back fully when cancelled while preparing the target', async () => {
    const entered = deferred();
    const release = deferred();
    bed.mocks.overrides.prepareTarget = async () => {
      entered.resolve();
      await release.promise;
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    await entered.promise;
    await handle.cancel();
    // The workflow rolls back without waiting for the slow step, which is let go only afterwards.
    const cause = await failureOf(handle).finally(() => release.resolve());

    expect(cause).toBeInstanceOf(CancelledFailure);
    expect((await handle.describe()).status.name).toBe('CANCELLED');
    expect(bed.mocks.names()).toEqual([
      'planMigration',
      'reserveCapacity',
      'prepareTarget',
      'discardTarget',
      'releaseReservation',
    ]);
    expect(bed.mocks.callsTo('discardTarget')[0].taskQueue).toBe(host('h-2'));
    expect(bed.mocks.callsTo('releaseReservation')[0].input).toEqual({ key: handle.workflowId });
    expect((await handle.describe()).typedSearchAttributes.get(PhaseKey)).toBe('rolled-back');
    expect((await handle.query(progressQuery)).switched).toBe(false);
  });

  it('releases the reservation but discards nothing when cancelled while reserving', async () => {
    const entered = deferred();
    const release = deferred();
    bed.mocks.overrides.reserveCapacity = async (input) => {
      entered.resolve();
      await release.promise;
      return { ...input };
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    await entered.promise;
    await handle.cancel();
    const cause = await failureOf(handle).finally(() => release.resolve());

    expect(cause).toBeInstanceOf(CancelledFailure);
    expect(bed.mocks.names()).toEqual(['planMigration', 'reserveCapacity', 'releaseReservation']);
  });

  it('rolls back and surfaces the failure when preparing the target fails', async () => {
    bed.mocks.overrides.prepareTarget = async () => {
      throw invalidState('h-2 has no room for the volumes of i-3');
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });

    const cause = await failureOf(handle);
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect(cause).toMatchObject({
      type: ErrorType.InvalidState,
      message: 'h-2 has no room for the volumes of i-3',
    });
    expect(bed.mocks.names()).toEqual([
      'planMigration',
      'reserveCapacity',
      'prepareTarget',
      'discardTarget',
      'releaseReservation',
    ]);
    expect((await handle.describe()).typedSearchAttributes.get(PhaseKey)).toBe('failed');
  });

  it('resumes the instance on the source and rolls back when the switch fails', async () => {
    bed.mocks.overrides.switchToTarget = async () => {
      throw invalidState('i-3 did not start on h-2');
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2', snapshot: false });

    expect(await failureOf(handle)).toMatchObject({ type: ErrorType.InvalidState });
    expect(bed.mocks.calls.map((c) => `${c.name}@${c.taskQueue}`)).toEqual([
      `planMigration@${CONTROL_TASK_QUEUE}`,
      `reserveCapacity@${CONTROL_TASK_QUEUE}`,
      `prepareTarget@${host('h-2')}`,
      `switchToTarget@${host('h-2')}`,
      `resumeInstance@${host('h-1')}`,
      `discardTarget@${host('h-2')}`,
      `releaseReservation@${CONTROL_TASK_QUEUE}`,
    ]);
  });
});

describe('liveMigration with a pre-migration snapshot', () => {
  it('keeps the snapshot when asked and skips it when turned off', async () => {
    const kept = await (
      await startMigration({ instanceId: 'i-3', targetHostId: 'h-2', keepSnapshot: true })
    ).result();
    expect(kept.snapshotIds).toHaveLength(2);
    expect(bed.mocks.callsTo('deleteSnapshot')).toHaveLength(0);

    bed.mocks.reset();
    const plain = await (
      await startMigration({ instanceId: 'i-3', targetHostId: 'h-2', snapshot: false })
    ).result();
    expect(plain.snapshotIds).toBeUndefined();
    expect(bed.mocks.names().filter((n) => /napshot/.test(n))).toEqual([]);
  });

  it('a failed switch whose source takes the instance back rolls back, snapshot unused', async () => {
    bed.mocks.overrides.switchToTarget = async () => {
      throw invalidState('i-3 did not start on h-2');
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    expect(await failureOf(handle)).toMatchObject({ type: ErrorType.InvalidState });
    expect(bed.mocks.callsTo('resumeInstance')).toHaveLength(1);
    expect(bed.mocks.callsTo('planRestore')).toHaveLength(0);
  });

  it('a failed switch with a lost source restores the instance from its snapshot on a third host', async () => {
    bed.mocks.overrides.switchToTarget = async () => {
      throw invalidState('i-3 did not start on h-2');
    };
    bed.mocks.overrides.resumeInstance = async () => {
      throw new Error('host h-1 does not answer');
    };
    bed.mocks.overrides.dropInstance = async () => {
      throw new Error('host h-1 does not answer');
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    const result = await handle.result();
    const snapshotIds = bed.mocks
      .callsTo('snapshotVolume')
      .map((c) => (c.input as { snapshotId: string }).snapshotId);

    expect(result.restored).toMatchObject({
      instanceId: 'i-3',
      fromHostId: 'h-1',
      hostId: 'h-3',
      snapshotIds,
      bytesRestored: 6 * MiB,
      previousReleased: false,
    });
    expect(result.snapshotIds).toEqual(snapshotIds);
    expect(bed.mocks.callsTo('planRestore')[0].input).toMatchObject({
      account: 'acme',
      snapshotIds,
      avoidHostIds: ['h-1', 'h-2'],
    });
    const after = bed.mocks.calls.slice(bed.mocks.calls.findIndex((c) => c.name === 'switchToTarget'));
    expect(after.map((c) => `${c.name}@${c.taskQueue}`)).toEqual([
      `switchToTarget@${host('h-2')}`,
      `resumeInstance@${host('h-1')}`,
      `resumeInstance@${host('h-1')}`,
      `resumeInstance@${host('h-1')}`,
      `discardTarget@${host('h-2')}`,
      `releaseReservation@${CONTROL_TASK_QUEUE}`,
      `planRestore@${CONTROL_TASK_QUEUE}`,
      `reserveCapacity@${CONTROL_TASK_QUEUE}`,
      `restoreVolume@${host('h-3')}`,
      `restoreVolume@${host('h-3')}`,
      `dropInstance@${host('h-1')}`,
      `dropInstance@${host('h-1')}`,
      `dropInstance@${host('h-1')}`,
      `startRestored@${host('h-3')}`,
      `commitMigration@${CONTROL_TASK_QUEUE}`,
    ]);
    expect(bed.mocks.callsTo('commitMigration')[0].input).toMatchObject({
      sourceHostId: 'h-1',
      targetHostId: 'h-3',
    });
    expect(bed.mocks.callsTo('deleteSnapshot')).toHaveLength(0);
  });
});

describe('liveMigration after the switch', () => {
  it('refuses a cancel, completes the sync, releases the source and commits', async () => {
    const entered = deferred();
    const release = deferred();
    let first = true;
    bed.mocks.overrides.syncVolumeSlice = async (input) => {
      if (first) {
        first = false;
        entered.resolve();
        await release.promise;
      }
      return bed.mocks.defaults.syncVolumeSlice(input);
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    await entered.promise;
    await handle.cancel();
    await eventually(
      async () => (await handle.query(progressQuery)).cancelRefused,
      'the cancel to be refused',
    );
    expect(await currentDetails(bed.client, handle.workflowId)).toBe(
      'cancel refused: i-3 already runs on h-2; the sync will complete',
    );
    release.resolve();

    const result = await handle.result();
    expect(result.cancelRefused).toBe(true);
    expect((await handle.describe()).status.name).toBe('COMPLETED');
    const names = bed.mocks.names();
    expect(names).toContain('releaseSource');
    expect(names.slice(-4)).toEqual(['releaseSource', 'commitMigration', 'deleteSnapshot', 'deleteSnapshot']);
    expect(names).not.toContain('discardTarget');
    expect(names).not.toContain('releaseReservation');
    expect((await handle.describe()).typedSearchAttributes.get(PhaseKey)).toBe('completed');
  });

  it('copies mismatched blocks again and verifies once more', async () => {
    let verifies = 0;
    bed.mocks.overrides.verifyVolume = async () => {
      verifies += 1;
      return { blocksVerified: 32, blocksWrittenOnTarget: 0, mismatchedBlocks: verifies === 1 ? [5, 9] : [] };
    };
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });
    const result = await handle.result();
    expect(result.blocksVerified).toBe(64);
    expect(bed.mocks.names().filter((n) => n === 'verifyVolume' || n === 'syncVolumeSlice')).toEqual([
      'syncVolumeSlice',
      'syncVolumeSlice',
      'syncVolumeSlice',
      'verifyVolume',
      'syncVolumeSlice',
      'verifyVolume',
      'verifyVolume',
    ]);
    expect(bed.mocks.callsTo('verifyVolume')[0].input).toMatchObject({
      volumeId: expect.stringMatching(/-a$/),
    });
  });

  it('fails with a DataIntegrity error naming the blocks when they keep differing', async () => {
    bed.mocks.overrides.verifyVolume = async () => ({
      blocksVerified: 64,
      blocksWrittenOnTarget: 0,
      mismatchedBlocks: [7, 11],
    });
    const handle = await startMigration({ instanceId: 'i-3', targetHostId: 'h-2' });

    const cause = await failureOf(handle);
    expectApplicationFailure(
      cause,
      ErrorType.DataIntegrity,
      /v-i-3-a .*after 3 verify rounds in blocks 7, 11/,
    );
    expect(bed.mocks.callsTo('verifyVolume')).toHaveLength(3);
    expect(bed.mocks.names()).not.toContain('releaseSource');
    expect(bed.mocks.names()).not.toContain('discardTarget');
    expect((await handle.describe()).typedSearchAttributes.get(PhaseKey)).toBe('failed');
  });
});

describe('liveMigration bad input', () => {
  const cases: [string, unknown][] = [
    ['instance id with a path', { instanceId: '../x', targetHostId: 'h-2' }],
    ['upper-case instance id', { instanceId: 'I-3', targetHostId: 'h-2' }],
    ['empty instance id', { instanceId: '', targetHostId: 'h-2' }],
    ['target with a path', { instanceId: 'i-3', targetHostId: '../h-2' }],
    ['missing target', { instanceId: 'i-3' }],
    ['negative bandwidth', { instanceId: 'i-3', targetHostId: 'h-2', bandwidthBytesPerSec: -5 }],
    ['fractional bandwidth', { instanceId: 'i-3', targetHostId: 'h-2', bandwidthBytesPerSec: 0.5 }],
  ];

  it.each(cases)('fails fast, non-retryable, touching nothing: %s', async (_name, input) => {
    const handle = await startMigration(input as LiveMigrationInput);
    const cause = await failureOf(handle);
    expectApplicationFailure(cause, ErrorType.InvalidInput);
    expect(bed.mocks.calls).toEqual([]);
  });

  it('does not retry an unknown instance reported by planMigration', async () => {
    bed.mocks.overrides.planMigration = async () => {
      throw notFound('instance i-404 not found: list instances with `rehome fleet list`');
    };
    const handle = await startMigration({ instanceId: 'i-404', targetHostId: 'h-2' });

    const cause = await failureOf(handle);
    expect(cause).toMatchObject({
      type: ErrorType.NotFound,
      message: expect.stringContaining('i-404 not found'),
    });
    expect(bed.mocks.names()).toEqual(['planMigration']);
  });
});
