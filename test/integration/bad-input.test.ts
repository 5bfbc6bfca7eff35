import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import {
  CONTROL_TASK_QUEUE,
  ErrorType,
  type FleetLayout,
  type LiveMigrationInput,
} from '../../src/contracts';
import { openInventory, type Inventory } from '../../src/fleet/inventory';
import { BAD_INPUT_FLEET } from '../helpers/bad-inputs';
import { startCluster, type TestCluster } from '../helpers/cluster';
import { fleetFingerprint } from '../helpers/fingerprint';

// Bad requests against the real server and workers: each fails fast, non-retryable, with a message that
// says what to change, and the inventory and every image stay byte-identical.
describe('bad migration input (integration)', () => {
  let cluster: TestCluster;
  let inventory: Inventory;
  let layout: FleetLayout;
  let n = 0;

  beforeAll(async () => {
    cluster = await startCluster();
    // Two slots per host and five instances: placement fills two hosts and leaves one slot free.
    layout = await cluster.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-bad-fleet',
      args: [BAD_INPUT_FLEET],
    });
    inventory = openInventory(cluster.dataDir);
  });

  afterAll(async () => {
    inventory?.close();
    await cluster?.stop();
  });

  async function expectRejected(input: LiveMigrationInput, type: ErrorType, message: RegExp) {
    const before = fleetFingerprint(cluster.dataDir, inventory);
    const started = Date.now();
    const err = await cluster.client.workflow
      .execute('liveMigration', { taskQueue: CONTROL_TASK_QUEUE, workflowId: `it-bad-${++n}`, args: [input] })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause;
    const failure = cause instanceof ApplicationFailure ? cause : (cause?.cause as ApplicationFailure);
    expect(failure).toBeInstanceOf(ApplicationFailure);
    expect(failure.type).toBe(type);
    expect(failure.nonRetryable).toBe(true);
    expect(failure.message).toMatch(message);
    // Fails fast: no retry back-off hides behind a bad request.
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(fleetFingerprint(cluster.dataDir, inventory)).toBe(before);
    expect(inventory.listReservations()).toEqual([]);
  }

  const fullHosts = () =>
    layout.hosts.filter((h) => layout.instances.filter((i) => i.hostId === h.hostId).length === 2);

  it('rejects an unknown instance', async () => {
    await expectRejected({ instanceId: 'i-99', targetHostId: 'h-1' }, ErrorType.NotFound, /i-99/);
  });

  it('rejects a target equal to the source', async () => {
    const i = layout.instances[0];
    await expectRejected(
      { instanceId: i.instanceId, targetHostId: i.hostId },
      ErrorType.InvalidInput,
      /already/i,
    );
  });

  it('rejects an unknown target host', async () => {
    await expectRejected({ instanceId: 'i-1', targetHostId: 'h-42' }, ErrorType.NotFound, /h-42/);
  });

  it('rejects a target without capacity', async () => {
    const [a, b] = fullHosts();
    const instance = layout.instances.find((i) => i.hostId === a.hostId)!;
    await expectRejected(
      { instanceId: instance.instanceId, targetHostId: b.hostId },
      ErrorType.NoCapacity,
      new RegExp(b.hostId),
    );
  });

  it('rejects an instance that is not running', async () => {
    const instance = layout.instances[layout.instances.length - 1];
    inventory.setInstanceState(instance.instanceId, 'stopped');
    try {
      const target = layout.hosts.find((h) => h.hostId !== instance.hostId)!.hostId;
      await expectRejected(
        { instanceId: instance.instanceId, targetHostId: target },
        ErrorType.InvalidState,
        /running/,
      );
    } finally {
      inventory.setInstanceState(instance.instanceId, 'running');
    }
  });

  it.each([['../x'], ['I-3'], [''], ['i_3'], ['a'.repeat(64)], ['i-3/../../etc']])(
    'rejects the malformed instance id %j',
    async (instanceId) => {
      await expectRejected({ instanceId, targetHostId: 'h-1' }, ErrorType.InvalidInput, /not a valid id/);
    },
  );

  it('rejects a malformed target id', async () => {
    await expectRejected(
      { instanceId: 'i-1', targetHostId: '../h-1' },
      ErrorType.InvalidInput,
      /not a valid id/,
    );
  });

  it('rejects a negative bandwidth', async () => {
    const i = layout.instances[0];
    const target = layout.hosts.find((h) => h.hostId !== i.hostId)!.hostId;
    await expectRejected(
      { instanceId: i.instanceId, targetHostId: target, bandwidthBytesPerSec: -5 },
      ErrorType.InvalidInput,
      /bandwidth/i,
    );
  });
});
