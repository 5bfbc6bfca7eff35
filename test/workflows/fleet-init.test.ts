import {
  CONTROL_TASK_QUEUE,
  ErrorType,
  HostIdKey,
  hostTaskQueue,
  InstanceIdKey,
  MiB,
  OperationKey,
  PhaseKey,
  WorkflowType,
  type FleetSpec,
  type InstanceLaunch,
} from '../../src/contracts';
import type { fleetInit } from '../../src/workflows';
import { expectApplicationFailure } from '../helpers/failures';
import { currentDetails, failureOf, layoutFor, useTestBed } from '../helpers/workflow-harness';

const bed = useTestBed();
const startFleetInit = (spec: FleetSpec) => bed.start<typeof fleetInit>(WorkflowType.fleetInit, spec);

describe('fleetInit', () => {
  const spec: FleetSpec = { hosts: 3, instances: 5, volumeSizeBytes: 16 * MiB, accounts: ['acme', 'globex'] };

  it('records the fleet, launches each host its instances on its own queue, then marks them running', async () => {
    const handle = await startFleetInit(spec);
    const layout = await handle.result();

    expect(layout).toEqual(layoutFor(spec));
    const names = bed.mocks.names();
    expect(names[0]).toBe('createFleet');
    expect(names.slice(1, 4)).toEqual(['launchInstances', 'launchInstances', 'launchInstances']);
    expect(names.slice(4)).toEqual(['markInstancesRunning']);
    expect(bed.mocks.callsTo('createFleet')[0]).toMatchObject({
      taskQueue: CONTROL_TASK_QUEUE,
      input: { key: handle.workflowId, spec },
    });

    const launched = Object.fromEntries(
      bed.mocks
        .callsTo('launchInstances')
        .map((c) => [c.taskQueue, (c.input as InstanceLaunch[]).map((l) => l.instanceId)]),
    );
    expect(launched).toEqual({
      [hostTaskQueue('h-1')]: ['i-1', 'i-4'],
      [hostTaskQueue('h-2')]: ['i-2', 'i-5'],
      [hostTaskQueue('h-3')]: ['i-3'],
    });
    const i4 = bed.mocks
      .callsTo('launchInstances')
      .flatMap((c) => c.input as InstanceLaunch[])
      .find((l) => l.instanceId === 'i-4');
    expect(i4).toEqual({
      instanceId: 'i-4',
      account: 'globex',
      volumes: [{ volumeId: 'v-i-4', sizeBytes: 16 * MiB, blockSize: 65536, userData: false }],
      workload: layout.instances[3].workload,
    });
    expect(bed.mocks.callsTo('markInstancesRunning')[0].input).toEqual({
      instanceIds: ['i-1', 'i-2', 'i-3', 'i-4', 'i-5'],
    });

    const attributes = (await handle.describe()).typedSearchAttributes;
    expect(attributes.get(OperationKey)).toBe('fleet-init');
    expect(attributes.get(PhaseKey)).toBe('completed');
    expect(attributes.get(InstanceIdKey)).toBeUndefined();
    expect(attributes.get(HostIdKey)).toBeUndefined();
    expect(await currentDetails(bed.client, handle.workflowId)).toMatch(
      /^\*\*completed\*\* fleet of 3 host\(s\), 5/,
    );
  });

  const bad: [string, unknown][] = [
    ['no hosts', { hosts: 0, instances: 1, volumeSizeBytes: MiB }],
    ['fractional instances', { hosts: 1, instances: 1.5, volumeSizeBytes: MiB }],
    ['size not a sector multiple', { hosts: 1, instances: 1, volumeSizeBytes: 1000 }],
    ['size not a whole MiB', { hosts: 1, instances: 1, volumeSizeBytes: MiB + 512 }],
    ['too many hosts', { hosts: 257, instances: 1, volumeSizeBytes: MiB }],
    ['bad account id', { hosts: 1, instances: 1, volumeSizeBytes: MiB, accounts: ['../acme'] }],
    [
      'odd write size',
      { hosts: 1, instances: 1, volumeSizeBytes: MiB, workload: { writeBytesPerSec: 0, writeSize: 100 } },
    ],
    [
      'write size over 1 MiB',
      { hosts: 1, instances: 1, volumeSizeBytes: MiB, workload: { writeBytesPerSec: 0, writeSize: 2 * MiB } },
    ],
    [
      'fractional write rate',
      { hosts: 1, instances: 1, volumeSizeBytes: MiB, workload: { writeBytesPerSec: 0.5, writeSize: 4096 } },
    ],
    ['bad instance shape', { hosts: 1, instances: 1, volumeSizeBytes: MiB, instanceShape: { vcpu: 0 } }],
    [
      'negative host capacity',
      {
        hosts: 1,
        instances: 1,
        volumeSizeBytes: MiB,
        hostCapacity: { vcpu: -1, memoryMiB: 1, diskBytes: 1 },
      },
    ],
  ];

  it.each(bad)('rejects a bad spec before touching anything: %s', async (_name, badSpec) => {
    const cause = await failureOf(await startFleetInit(badSpec as FleetSpec));
    expectApplicationFailure(cause, ErrorType.InvalidInput);
    expect(bed.mocks.calls).toEqual([]);
  });
});
