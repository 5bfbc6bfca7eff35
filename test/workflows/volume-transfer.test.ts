import {
  CONTROL_TASK_QUEUE,
  DEFAULT_BLOCK_SIZE,
  ErrorType,
  HostIdKey,
  hostTaskQueue,
  InstanceIdKey,
  MiB,
  notFound,
  OperationKey,
  PhaseKey,
  WorkflowType,
  type VolumeExportInput,
  type VolumeImportInput,
} from '../../src/contracts';
import { ApplicationFailure } from '@temporalio/common';
import type { volumeExport, volumeImport } from '../../src/workflows';
import { expectApplicationFailure } from '../helpers/failures';
import { failureOf, useTestBed } from '../helpers/workflow-harness';

const bed = useTestBed();
const startImport = (input: VolumeImportInput) =>
  bed.start<typeof volumeImport>(WorkflowType.volumeImport, input);
const startExport = (input: VolumeExportInput) =>
  bed.start<typeof volumeExport>(WorkflowType.volumeExport, input);

describe('volumeImport', () => {
  it('plans, copies the image in on the instance host, then commits the volume', async () => {
    const handle = await startImport({ instanceId: 'i-3', path: '/var/tmp/disk.img' });
    const result = await handle.result();

    expect(bed.mocks.calls.map((c) => `${c.name}@${c.taskQueue}`)).toEqual([
      `planVolumeImport@${CONTROL_TASK_QUEUE}`,
      `importVolume@${hostTaskQueue('h-3')}`,
      `commitVolume@${CONTROL_TASK_QUEUE}`,
    ]);
    expect(bed.mocks.callsTo('planVolumeImport')[0].input).toEqual({
      key: handle.workflowId,
      instanceId: 'i-3',
      path: '/var/tmp/disk.img',
      workloadWrites: false,
    });
    const plan = {
      volumeId: 'v-i-3-imported',
      instanceId: 'i-3',
      hostId: 'h-3',
      sizeBytes: 8 * MiB,
      blockSize: DEFAULT_BLOCK_SIZE,
      userData: true,
    };
    expect(bed.mocks.callsTo('importVolume')[0].input).toEqual({
      volumeId: plan.volumeId,
      instanceId: 'i-3',
      path: '/var/tmp/disk.img',
      sizeBytes: plan.sizeBytes,
      blockSize: plan.blockSize,
      userData: true,
    });
    // The commit drops the reservation the plan made under the workflow's id.
    expect(bed.mocks.callsTo('commitVolume')[0].input).toEqual({ ...plan, key: handle.workflowId });
    expect(result).toEqual({
      volumeId: plan.volumeId,
      instanceId: 'i-3',
      hostId: 'h-3',
      sizeBytes: 8 * MiB,
      sha256: 'ab'.repeat(32),
    });

    const attributes = (await handle.describe()).typedSearchAttributes;
    expect(attributes.get(OperationKey)).toBe('volume-import');
    expect(attributes.get(InstanceIdKey)).toBe('i-3');
    expect(attributes.get(HostIdKey)).toBe('h-3');
    expect(attributes.get(PhaseKey)).toBe('completed');
  });

  it('gives the reserved disk room back when the copy fails', async () => {
    bed.mocks.overrides.importVolume = async () => {
      throw ApplicationFailure.create({
        type: ErrorType.DataIntegrity,
        message: 'hash mismatch',
        nonRetryable: true,
      });
    };
    const handle = await startImport({ instanceId: 'i-3', path: '/var/tmp/disk.img' });
    expectApplicationFailure(await failureOf(handle), ErrorType.DataIntegrity, /hash mismatch/);
    expect(bed.mocks.calls.map((c) => c.name)).toEqual([
      'planVolumeImport',
      'importVolume',
      'releaseReservation',
    ]);
    expect(bed.mocks.callsTo('releaseReservation')[0].input).toEqual({ key: handle.workflowId });
    expect((await handle.describe()).typedSearchAttributes.get(PhaseKey)).toBe('failed');
  });

  const bad: [string, unknown][] = [
    ['relative path', { instanceId: 'i-3', path: 'disk.img' }],
    ['empty path', { instanceId: 'i-3', path: '' }],
    ['path with NUL', { instanceId: 'i-3', path: '/tmp/a\0b' }],
    ['bad instance id', { instanceId: '../i-3', path: '/tmp/disk.img' }],
    ['non-boolean workloadWrites', { instanceId: 'i-3', path: '/tmp/disk.img', workloadWrites: 'yes' }],
  ];

  it.each(bad)('rejects bad input before touching anything: %s', async (_name, input) => {
    const cause = await failureOf(await startImport(input as VolumeImportInput));
    expectApplicationFailure(cause, ErrorType.InvalidInput);
    expect(bed.mocks.calls).toEqual([]);
  });
});

describe('volumeExport', () => {
  it('finds the volume host and writes the image out from there', async () => {
    const handle = await startExport({ volumeId: 'v-7', path: '/var/tmp/out.img' });
    const result = await handle.result();

    expect(bed.mocks.calls.map((c) => `${c.name}@${c.taskQueue}`)).toEqual([
      `describeVolume@${CONTROL_TASK_QUEUE}`,
      `exportVolume@${hostTaskQueue('h-2')}`,
    ]);
    expect(bed.mocks.callsTo('exportVolume')[0].input).toEqual({ volumeId: 'v-7', path: '/var/tmp/out.img' });
    expect(result).toEqual({
      volumeId: 'v-7',
      hostId: 'h-2',
      path: '/var/tmp/out.img',
      sizeBytes: 8 * MiB,
      sha256: 'cd'.repeat(32),
    });
    const attributes = (await handle.describe()).typedSearchAttributes;
    expect(attributes.get(OperationKey)).toBe('volume-export');
    expect(attributes.get(InstanceIdKey)).toBe('i-5');
    expect(attributes.get(HostIdKey)).toBe('h-2');
    expect(attributes.get(PhaseKey)).toBe('completed');
  });

  it('rejects a relative path and a malformed volume id before touching anything', async () => {
    for (const input of [
      { volumeId: 'v-7', path: 'out.img' },
      { volumeId: 'V 7', path: '/tmp/out.img' },
    ]) {
      const cause = await failureOf(await startExport(input));
      expectApplicationFailure(cause, ErrorType.InvalidInput);
    }
    expect(bed.mocks.calls).toEqual([]);
  });

  it('surfaces an unknown volume without retrying it', async () => {
    bed.mocks.overrides.describeVolume = async () => {
      throw notFound('volume v-404 not found');
    };
    const cause = await failureOf(await startExport({ volumeId: 'v-404', path: '/tmp/out.img' }));
    expect(cause).toMatchObject({ type: ErrorType.NotFound, message: 'volume v-404 not found' });
    expect(bed.mocks.names()).toEqual(['describeVolume']);
  });
});
