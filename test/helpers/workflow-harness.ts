import { Context } from '@temporalio/activity';
import { WorkflowFailedError, type Client, type Workflow, type WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, DefaultLogger, Worker } from '@temporalio/worker';
import type { ControlActivities } from '../../src/activities/control-activities';
import type { HostActivities } from '../../src/activities/host-activities';
import {
  CONTROL_TASK_QUEUE,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_WORKLOAD,
  hostTaskQueue,
  MiB,
  SEARCH_ATTRIBUTES,
  type FleetLayout,
  type FleetSpec,
  type MigrationPlan,
  type VolumeRecord,
} from '../../src/contracts';
import { testServerPath } from './test-server';

/**
 * Time-skipping Temporal with the real workflow bundle and mocked activities: one worker on the
 * control queue (workflows + mocks) and one per simulated host queue (mocks), so every call lands on
 * the queue a real agent would serve and the mocks can record which one that was.
 */

export type AllActivities = ControlActivities & HostActivities;
export type ActivityName = keyof AllActivities;

export interface RecordedCall {
  name: ActivityName;
  taskQueue: string;
  /** Run as a local activity (inside the workflow task) rather than through the server. */
  local: boolean;
  input: unknown;
}

export const HOSTS = ['h-1', 'h-2', 'h-3'];
const BLOCKS_PER_SLICE = 32;

export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** instance i-3 of account acme on h-1 with two volumes (64 + 32 blocks of 64 KiB). */
export function defaultPlan(instanceId = 'i-3', targetHostId = 'h-2'): MigrationPlan {
  const volume = (volumeId: string, sizeBytes: number): VolumeRecord => ({
    volumeId,
    instanceId,
    hostId: 'h-1',
    sizeBytes,
    blockSize: DEFAULT_BLOCK_SIZE,
    kind: 'instance-store',
    userData: false,
  });
  return {
    instanceId,
    account: 'acme',
    sourceHostId: 'h-1',
    targetHostId,
    resources: { vcpu: 2, memoryMiB: 4096, diskBytes: 6 * MiB },
    volumes: [volume(`v-${instanceId}-a`, 4 * MiB), volume(`v-${instanceId}-b`, 2 * MiB)],
    workload: DEFAULT_WORKLOAD,
  };
}

/** What a control plane would lay out for a spec: round-robin hosts and accounts, one volume each. */
export function layoutFor(spec: FleetSpec): FleetLayout {
  const hosts = Array.from({ length: spec.hosts }, (_, i) => ({
    hostId: `h-${i + 1}`,
    zone: 'zone-a',
    capacity: { vcpu: 64, memoryMiB: 262144, diskBytes: 1024 * MiB },
  }));
  const accounts = spec.accounts ?? ['acme'];
  const instances = Array.from({ length: spec.instances }, (_, i) => ({
    instanceId: `i-${i + 1}`,
    account: accounts[i % accounts.length],
    hostId: hosts[i % hosts.length].hostId,
    shape: { vcpu: 2, memoryMiB: 4096, diskBytes: spec.volumeSizeBytes },
    state: 'pending' as const,
    tags: {},
    workload: spec.workload ?? DEFAULT_WORKLOAD,
  }));
  const volumes = instances.map((instance) => ({
    volumeId: `v-${instance.instanceId}`,
    instanceId: instance.instanceId,
    hostId: instance.hostId,
    sizeBytes: spec.volumeSizeBytes,
    blockSize: DEFAULT_BLOCK_SIZE,
    kind: 'instance-store' as const,
    userData: false,
  }));
  return { hosts, instances, volumes };
}

/** Happy-path behaviour of every activity; a test replaces single activities through `overrides`. */
function defaultBehaviour(): AllActivities {
  const copied = new Map<string, number>();
  return {
    planMigration: async (input) => defaultPlan(input.instanceId, input.targetHostId),
    reserveCapacity: async (input) => ({ ...input }),
    releaseReservation: async () => undefined,
    commitMigration: async () => undefined,
    createFleet: async ({ spec }) => layoutFor(spec),
    markInstancesRunning: async () => undefined,
    planVolumeImport: async ({ instanceId, workloadWrites }) => ({
      volumeId: `v-${instanceId}-imported`,
      instanceId,
      hostId: 'h-3',
      sizeBytes: 8 * MiB,
      blockSize: DEFAULT_BLOCK_SIZE,
      userData: !workloadWrites,
    }),
    commitVolume: async () => undefined,
    describeVolume: async ({ volumeId }) => ({
      volumeId,
      instanceId: 'i-5',
      hostId: 'h-2',
      sizeBytes: 8 * MiB,
      blockSize: DEFAULT_BLOCK_SIZE,
      kind: 'instance-store',
      userData: true,
    }),
    launchInstances: async (launches) =>
      launches.map((l) => ({ instanceId: l.instanceId, volumes: l.volumes.length })),
    prepareTarget: async () => undefined,
    switchToTarget: async () => ({ lastSourceSeq: 41, pausedAtMs: 1_000, resumedAtMs: 1_007, downtimeMs: 7 }),
    resumeInstance: async () => undefined,
    syncVolumeSlice: async ({ volumeId }) => {
      // Volume sizes follow defaultPlan: "-a" has 64 blocks, "-b" has 32.
      const total = volumeId.endsWith('-a') ? 64 : 32;
      const before = copied.get(volumeId) ?? 0;
      const after = Math.min(total, before + BLOCKS_PER_SLICE);
      copied.set(volumeId, after);
      return {
        done: after === total,
        blocksDone: after,
        blocksTotal: total,
        bytesCopied: (after - before) * DEFAULT_BLOCK_SIZE,
        bytesReadThrough: 3 * DEFAULT_BLOCK_SIZE,
        bytesRecopied: 0,
      };
    },
    setSyncBandwidth: async () => undefined,
    verifyVolume: async ({ volumeId }) => ({
      blocksVerified: volumeId.endsWith('-a') ? 60 : 32,
      blocksWrittenOnTarget: volumeId.endsWith('-a') ? 4 : 0,
      mismatchedBlocks: [],
    }),
    finalizeTarget: async () => undefined,
    discardTarget: async () => undefined,
    releaseSource: async () => undefined,
    importVolume: async (input) => ({
      volumeId: input.volumeId,
      instanceId: input.instanceId,
      hostId: 'h-3',
      sizeBytes: input.sizeBytes,
      sha256: 'ab'.repeat(32),
    }),
    exportVolume: async (input) => ({
      volumeId: input.volumeId,
      hostId: 'h-2',
      path: input.path,
      sizeBytes: 8 * MiB,
      sha256: 'cd'.repeat(32),
    }),
    planSnapshot: async ({ instanceId }) => {
      const plan = defaultPlan(instanceId);
      return {
        instanceId,
        account: plan.account,
        hostId: plan.sourceHostId,
        volumes: plan.volumes.map(({ volumeId, sizeBytes, blockSize, kind }) => ({
          volumeId,
          sizeBytes,
          blockSize,
          kind,
        })),
      };
    },
    snapshotVolume: async (input) => ({
      snapshotId: input.snapshotId,
      account: input.account,
      instanceId: input.instanceId,
      volumeId: input.volumeId,
      sizeBytes: 4 * MiB,
      blockSize: DEFAULT_BLOCK_SIZE,
      chunkSize: DEFAULT_BLOCK_SIZE,
      chunkCount: 64,
      hashAlgorithm: 'blake3',
      sourceEvent: input.event,
      createdAt: input.createdAt,
      bytesUploaded: MiB,
      bytesTotal: 4 * MiB,
      atSeq: 40,
      pausedMs: 1,
    }),
    retainSnapshots: async () => ({
      deleted: [],
      kept: [],
      gc: { packsDeleted: 0, packsRepacked: 0, bytesFreed: 0, bytesLive: 0 },
    }),
    deleteSnapshot: async ({ snapshotId }) => ({
      snapshotId,
      deleted: true,
      gc: { packsDeleted: 1, packsRepacked: 0, bytesFreed: MiB, bytesLive: 0 },
    }),
    describeSnapshot: async ({ account, snapshotId }) => ({
      snapshotId,
      account,
      instanceId: 'i-3',
      volumeId: 'v-i-3-a',
      sizeBytes: 4 * MiB,
      blockSize: DEFAULT_BLOCK_SIZE,
      chunkSize: DEFAULT_BLOCK_SIZE,
      chunkCount: 64,
      hashAlgorithm: 'blake3',
      sourceEvent: 'manual',
      createdAt: '2026-11-25T12:00:00.000Z',
      bytesUploaded: MiB,
      bytesTotal: 4 * MiB,
    }),
    planRestore: async ({ account, snapshotIds, targetHostId, avoidHostIds }) => {
      const plan = defaultPlan('i-3');
      const hostId = targetHostId ?? HOSTS.find((h) => h !== 'h-1' && !(avoidHostIds ?? []).includes(h))!;
      return {
        instanceId: 'i-3',
        account,
        fromHostId: 'h-1',
        hostId,
        resources: plan.resources,
        workload: plan.workload,
        volumes: plan.volumes.map(({ volumeId, sizeBytes, blockSize, userData }, n) => ({
          volumeId,
          sizeBytes,
          blockSize,
          userData,
          snapshotId: snapshotIds[n] ?? snapshotIds[0],
        })),
      };
    },
    restoreVolume: async ({ volumeId }) => ({
      volumeId,
      bytesRestored: volumeId.endsWith('-a') ? 4 * MiB : 2 * MiB,
    }),
    startRestored: async () => ({ resumedAtSeq: 41 }),
    dropInstance: async () => undefined,
    discardRestored: async () => undefined,
  };
}

export class ActivityMocks {
  calls: RecordedCall[] = [];
  overrides: Partial<AllActivities> = {};
  /** The happy-path behaviour, for overrides that wrap it (calling these records nothing). */
  defaults = defaultBehaviour();

  /** Registered on every worker: records the call and the queue it arrived on, then behaves. */
  readonly activities: AllActivities = Object.fromEntries(
    (Object.keys(defaultBehaviour()) as ActivityName[]).map((name) => [
      name,
      async (input: unknown) => {
        const { taskQueue, isLocal } = Context.current().info;
        this.calls.push({ name, taskQueue, local: isLocal, input });
        const impl = (this.overrides[name] ?? this.defaults[name]) as (arg: unknown) => Promise<unknown>;
        return impl(input);
      },
    ]),
  ) as unknown as AllActivities;

  reset(): void {
    this.calls = [];
    this.overrides = {};
    this.defaults = defaultBehaviour();
  }

  names(): ActivityName[] {
    return this.calls.map((c) => c.name);
  }

  callsTo(name: ActivityName): RecordedCall[] {
    return this.calls.filter((c) => c.name === name);
  }
}

export interface WorkflowTestBed {
  env: TestWorkflowEnvironment;
  client: Client;
  mocks: ActivityMocks;
  stop(): Promise<void>;
}

/** Like the embedded dev server, the test server rejects upserts of attributes it has not been told about. */
async function registerSearchAttributes(env: TestWorkflowEnvironment): Promise<void> {
  const keyword = temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
  await env.connection.operatorService.addSearchAttributes({
    namespace: env.namespace ?? 'default',
    searchAttributes: Object.fromEntries(Object.keys(SEARCH_ATTRIBUTES).map((name) => [name, keyword])),
  });
}

export async function startTestBed(): Promise<WorkflowTestBed> {
  const env = await TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: testServerPath() } },
  });
  const mocks = new ActivityMocks();
  try {
    await registerSearchAttributes(env);
    const workflowBundle = await bundleWorkflowCode({
      workflowsPath: require.resolve('../../src/workflows'),
      logger: new DefaultLogger('ERROR'),
    });
    const connection = env.nativeConnection;
    const workers = [
      await Worker.create({
        connection,
        taskQueue: CONTROL_TASK_QUEUE,
        workflowBundle,
        activities: mocks.activities,
      }),
      ...(await Promise.all(
        HOSTS.map((hostId) =>
          Worker.create({ connection, taskQueue: hostTaskQueue(hostId), activities: mocks.activities }),
        ),
      )),
    ];
    const running = workers.map((w) => w.run());
    return {
      env,
      client: env.client,
      mocks,
      async stop() {
        for (const w of workers) w.shutdown();
        await Promise.all(running);
        await env.teardown();
      },
    };
  } catch (err) {
    await env.teardown();
    throw err;
  }
}

export interface SharedTestBed {
  readonly client: Client;
  readonly mocks: ActivityMocks;
  /** Starts a workflow on the control queue under a fresh workflow id (derived from the type, so a valid id). */
  start<W extends Workflow>(type: string, ...args: Parameters<W>): Promise<WorkflowHandle<W>>;
}

/**
 * One test bed for the whole test file, started before its first test and stopped after its last,
 * with the mocks reset before each test. Call it at the top level of the file.
 */
export function useTestBed(): SharedTestBed {
  let bed: WorkflowTestBed | undefined;
  let seq = 0;
  const current = (): WorkflowTestBed => {
    if (!bed) throw new Error('the test bed is not running: call useTestBed() at the top level of the file');
    return bed;
  };

  beforeAll(async () => {
    bed = await startTestBed();
  });
  afterAll(async () => {
    await bed?.stop();
  });
  beforeEach(() => current().mocks.reset());

  return {
    get client() {
      return current().client;
    },
    get mocks() {
      return current().mocks;
    },
    start<W extends Workflow>(type: string, ...args: Parameters<W>): Promise<WorkflowHandle<W>> {
      seq += 1;
      const kebab = type.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
      const workflowId = `${kebab}-${seq}`;
      // The SDK's conditional `args` type cannot be resolved for a generic W: start untyped, then narrow.
      const started = current().client.workflow.start<Workflow>(type, {
        taskQueue: CONTROL_TASK_QUEUE,
        workflowId,
        args,
      });
      return started as Promise<WorkflowHandle<W>>;
    },
  };
}

/** The failure the workflow ended with (WorkflowFailedError.cause), or a test failure if it succeeded. */
export async function failureOf(handle: WorkflowHandle): Promise<unknown> {
  const err = await handle.result().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowFailedError);
  return (err as WorkflowFailedError).cause;
}

/** Polls (real time) until `check` holds; for waiting on a workflow to reach a point a mock cannot signal. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The workflow's current details line, as the Web UI shows it (served by the workflow's metadata query). */
export async function currentDetails(client: Client, workflowId: string): Promise<string> {
  const metadata = await client.workflow
    .getHandle(workflowId)
    .query<{ currentDetails?: string }>('__temporal_workflow_metadata');
  return metadata.currentDetails ?? '';
}
