import {
  CONTROL_TASK_QUEUE,
  ErrorType,
  forbidden,
  hostTaskQueue,
  MiB,
  noCapacity,
  PhaseKey,
  restoreProgressQuery,
  snapshotProgressQuery,
  WorkflowType,
  type PreMigrationSnapshotInput,
  type RestoreInstanceInput,
} from '../../src/contracts';
import type { deleteSnapshot, preMigrationSnapshot, restoreInstance } from '../../src/workflows';
import { expectApplicationFailure } from '../helpers/failures';
import { failureOf, useTestBed } from '../helpers/workflow-harness';

const bed = useTestBed();
const host = (id: string) => hostTaskQueue(id);
const snapshotOf = (input: PreMigrationSnapshotInput) =>
  bed.start<typeof preMigrationSnapshot>(WorkflowType.preMigrationSnapshot, input);
const restore = (input: RestoreInstanceInput) =>
  bed.start<typeof restoreInstance>(WorkflowType.restoreInstance, input);
const sequence = () => bed.mocks.calls.map((c) => `${c.name}@${c.taskQueue}`);

describe('preMigrationSnapshot', () => {
  it('snapshots every instance-store volume on the instance host, then applies retention', async () => {
    bed.mocks.overrides.retainSnapshots = async ({ volumeId }) => ({
      deleted: volumeId.endsWith('-a') ? ['snap-old'] : [],
      kept: [],
      gc: { packsDeleted: 1, packsRepacked: 0, bytesFreed: MiB, bytesLive: 0 },
    });
    const handle = await snapshotOf({ instanceId: 'i-3', event: 'maintenance:mw-7', keepLast: 2 });
    const result = await handle.result();

    expect(sequence()).toEqual([
      `planSnapshot@${CONTROL_TASK_QUEUE}`,
      `snapshotVolume@${host('h-1')}`,
      `snapshotVolume@${host('h-1')}`,
      `retainSnapshots@${CONTROL_TASK_QUEUE}`,
      `retainSnapshots@${CONTROL_TASK_QUEUE}`,
    ]);
    const ids = result.snapshots.map((s) => s.snapshotId);
    expect(new Set(ids).size).toBe(2);
    for (const id of ids) expect(id).toMatch(/^snap-[0-9a-f]{12}$/);
    expect(result).toMatchObject({
      instanceId: 'i-3',
      account: 'acme',
      hostId: 'h-1',
      retired: ['snap-old'],
    });
    expect(bed.mocks.callsTo('snapshotVolume')[1].input).toMatchObject({
      volumeId: 'v-i-3-b',
      event: 'maintenance:mw-7',
      account: 'acme',
    });
    expect(bed.mocks.callsTo('retainSnapshots')[0].input).toEqual({
      account: 'acme',
      volumeId: 'v-i-3-a',
      keepLast: 2,
    });
    expect(await handle.query(snapshotProgressQuery)).toEqual({
      phase: 'completed',
      instanceId: 'i-3',
      volumesDone: 2,
      volumesTotal: 2,
      bytesUploaded: 2 * MiB,
    });
    const attrs = (await handle.describe()).searchAttributes;
    expect(attrs[PhaseKey.name]).toEqual(['completed']);
  });

  it('plans inside the workflow task, and retains only when this snapshot leaves more than keepLast', async () => {
    bed.mocks.overrides.planSnapshot = async (input) => {
      const plan = await bed.mocks.defaults.planSnapshot(input);
      // v-i-3-a holds 2 snapshots: with this one it is over keepLast 2. v-i-3-b holds 1: not yet.
      return { ...plan, volumes: plan.volumes.map((v, i) => ({ ...v, snapshotsHeld: 2 - i })) };
    };
    const result = await (await snapshotOf({ instanceId: 'i-3', event: 'manual', keepLast: 2 })).result();
    expect(sequence()).toEqual([
      `planSnapshot@${CONTROL_TASK_QUEUE}`,
      `snapshotVolume@${host('h-1')}`,
      `snapshotVolume@${host('h-1')}`,
      `retainSnapshots@${CONTROL_TASK_QUEUE}`,
    ]);
    expect(bed.mocks.calls.map((c) => c.local)).toEqual([true, false, false, false]);
    expect(bed.mocks.callsTo('retainSnapshots')[0].input).toMatchObject({ volumeId: 'v-i-3-a' });
    expect(result.snapshots).toHaveLength(2);
  });

  it('skips an instance without instance-store volumes, snapshotting nothing', async () => {
    bed.mocks.overrides.planSnapshot = async ({ instanceId }) => ({
      instanceId,
      account: 'acme',
      hostId: 'h-1',
      volumes: [],
    });
    const result = await (await snapshotOf({ instanceId: 'i-3', event: 'manual' })).result();
    expect(result.snapshots).toEqual([]);
    expect(result.skipped).toMatch(/no instance-store volumes/);
    expect(sequence()).toEqual([`planSnapshot@${CONTROL_TASK_QUEUE}`]);
  });

  it.each([
    ['a malformed instance id', { instanceId: '../x', event: 'manual' }, /instanceId/],
    ['a hostile event', { instanceId: 'i-3', event: 'x; rm -rf /' }, /event/],
    ['keepLast 0', { instanceId: 'i-3', event: 'manual', keepLast: 0 }, /keepLast 0/],
    ['keepLast 2.5', { instanceId: 'i-3', event: 'manual', keepLast: 2.5 }, /keepLast 2.5/],
  ])('refuses %s without calling anything', async (_what, input, message) => {
    const handle = await snapshotOf(input as PreMigrationSnapshotInput);
    expectApplicationFailure(await failureOf(handle), ErrorType.InvalidInput, message);
    expect(bed.mocks.calls).toEqual([]);
  });

  it('surfaces the refusal of another account, non-retryable', async () => {
    bed.mocks.overrides.planSnapshot = async () => {
      throw forbidden('instance i-3 does not belong to account evil: use the owning account');
    };
    const handle = await snapshotOf({ instanceId: 'i-3', event: 'manual', account: 'evil' });
    expectApplicationFailure(await failureOf(handle), ErrorType.Forbidden, /does not belong to account evil/);
    expect(bed.mocks.names()).toEqual(['planSnapshot']);
  });
});

describe('restoreInstance', () => {
  it('reserves, restores each volume, removes the old copy, starts and commits', async () => {
    const handle = await restore({ account: 'acme', snapshotIds: ['snap-a', 'snap-b'] });
    const result = await handle.result();
    expect(sequence()).toEqual([
      `planRestore@${CONTROL_TASK_QUEUE}`,
      `reserveCapacity@${CONTROL_TASK_QUEUE}`,
      `restoreVolume@${host('h-2')}`,
      `restoreVolume@${host('h-2')}`,
      `dropInstance@${host('h-1')}`,
      `startRestored@${host('h-2')}`,
      `commitMigration@${CONTROL_TASK_QUEUE}`,
    ]);
    expect(result).toEqual({
      instanceId: 'i-3',
      account: 'acme',
      fromHostId: 'h-1',
      hostId: 'h-2',
      snapshotIds: ['snap-a', 'snap-b'],
      bytesRestored: 6 * MiB,
      previousReleased: true,
    });
    expect(bed.mocks.callsTo('commitMigration')[0].input).toEqual({
      key: handle.workflowId,
      instanceId: 'i-3',
      sourceHostId: 'h-1',
      targetHostId: 'h-2',
    });
    expect(await handle.query(restoreProgressQuery)).toMatchObject({
      phase: 'completed',
      volumesDone: 2,
      bytesRestored: 6 * MiB,
    });
  });

  it('undoes the restored volumes and the reservation when a volume cannot be restored', async () => {
    bed.mocks.overrides.restoreVolume = async ({ volumeId }) => {
      if (volumeId.endsWith('-b')) throw noCapacity('h-2 has no room left for v-i-3-b');
      return { volumeId, bytesRestored: 4 * MiB };
    };
    const handle = await restore({ account: 'acme', snapshotIds: ['snap-a'], targetHostId: 'h-2' });
    expectApplicationFailure(await failureOf(handle), ErrorType.NoCapacity, /no room left/);
    expect(sequence()).toEqual([
      `planRestore@${CONTROL_TASK_QUEUE}`,
      `reserveCapacity@${CONTROL_TASK_QUEUE}`,
      `restoreVolume@${host('h-2')}`,
      `restoreVolume@${host('h-2')}`,
      `discardRestored@${host('h-2')}`,
      `releaseReservation@${CONTROL_TASK_QUEUE}`,
    ]);
    expect(bed.mocks.callsTo('discardRestored')[0].input).toMatchObject({
      restoreId: handle.workflowId,
      instanceId: 'i-3',
      volumeIds: ['v-i-3-a', 'v-i-3-b'],
    });
  });

  it.each([
    ['no account', { snapshotIds: ['snap-a'] }, /account/],
    ['no snapshots', { account: 'acme', snapshotIds: [] }, /snapshotIds must list 1 to 64/],
    ['a traversal id', { account: 'acme', snapshotIds: ['../../etc'] }, /snapshotIds\[0\]/],
    ['a bad host', { account: 'acme', snapshotIds: ['snap-a'], targetHostId: 'H 1' }, /targetHostId/],
  ])('refuses %s without calling anything', async (_what, input, message) => {
    const handle = await restore(input as RestoreInstanceInput);
    expectApplicationFailure(await failureOf(handle), ErrorType.InvalidInput, message);
    expect(bed.mocks.calls).toEqual([]);
  });

  it('surfaces a wrong account from the plan, changing nothing', async () => {
    bed.mocks.overrides.planRestore = async () => {
      throw forbidden('snapshot snap-a does not belong to account evil');
    };
    const handle = await restore({ account: 'evil', snapshotIds: ['snap-a'] });
    expectApplicationFailure(await failureOf(handle), ErrorType.Forbidden, /does not belong to account evil/);
    expect(bed.mocks.names()).toEqual(['planRestore']);
  });
});

describe('deleteSnapshot', () => {
  it('describes, then deletes for the owning account', async () => {
    const handle = await bed.start<typeof deleteSnapshot>(WorkflowType.deleteSnapshot, {
      account: 'acme',
      snapshotId: 'snap-a',
    });
    expect(await handle.result()).toMatchObject({ snapshotId: 'snap-a', deleted: true });
    expect(sequence()).toEqual([
      `describeSnapshot@${CONTROL_TASK_QUEUE}`,
      `deleteSnapshot@${CONTROL_TASK_QUEUE}`,
    ]);
  });
});
