import type { Client, WorkflowHandleWithFirstExecutionRunId as StartedHandle } from '@temporalio/client';
import {
  formatBytes,
  CONTROL_TASK_QUEUE,
  ID_PATTERN,
  Operation,
  WorkflowType,
  type FleetSpec,
  type InstanceRecord,
  type LiveMigrationInput,
  type Visibility,
  visibilityPairs,
} from '../contracts';
import { workflowUrl } from '../temporal/connection';
import type { CliContext } from './context';
import { explainStartError } from './errors';

export interface StartRequest {
  type: string;
  workflowId: string;
  args: unknown[];
  /** One line in the Web UI's workflow list. */
  summary: string;
  visibility: Visibility;
}

/**
 * A workflow id from a prefix and the things it acts on, plus a time-based nonce. Kept to the id
 * pattern because workflows use their own id as a key in paths; long parts are dropped, not cut.
 */
export function operationId(prefix: string, parts: string[], now = Date.now()): string {
  const nonce = now.toString(36);
  for (let keep = parts.length; keep >= 0; keep -= 1) {
    const id = [prefix, ...parts.slice(0, keep), nonce].join('-');
    if (ID_PATTERN.test(id)) return id;
  }
  return `${prefix}-${nonce}`;
}

/** How every client (CLI, demo) starts a fleet init, so the Web UI shows them alike. */
export function fleetInitRequest(spec: FleetSpec): StartRequest {
  return {
    type: WorkflowType.fleetInit,
    workflowId: `fleet-init-${Date.now()}`,
    args: [spec],
    summary: `fleet init: ${spec.hosts} hosts, ${spec.instances} instances × ${formatBytes(spec.volumeSizeBytes)}`,
    visibility: { operation: Operation.fleetInit },
  };
}

/**
 * How every client (CLI, demo) starts a live migration. The instance's current host and account,
 * when this machine's inventory knows them, label the workflow from its first moment.
 */
export function migrationRequest(
  input: LiveMigrationInput,
  instance?: Pick<InstanceRecord, 'hostId' | 'account'>,
): StartRequest {
  const { instanceId, targetHostId } = input;
  return {
    type: WorkflowType.liveMigration,
    workflowId: operationId('migrate', [instanceId, `to-${targetHostId}`]),
    args: [input],
    summary: `live-migrate ${instanceId} ${instance?.hostId ?? '?'} → ${targetHostId}`,
    visibility: {
      operation: Operation.liveMigration,
      instanceId,
      hostId: targetHostId,
      account: instance?.account,
      phase: 'validating',
    },
  };
}

/** Starts a workflow on the control queue, after checking that a worker will pick it up. */
export async function startOperation(ctx: CliContext, request: StartRequest): Promise<StartedHandle> {
  await ctx.requireWorker();
  return startWorkflow(await ctx.client(), request);
}

/** Starts a workflow on the control queue with its summary and search attributes set from the start. */
export async function startWorkflow(client: Client, request: StartRequest): Promise<StartedHandle> {
  try {
    return await client.workflow.start(request.type, {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: request.workflowId,
      args: request.args,
      staticSummary: request.summary,
      typedSearchAttributes: visibilityPairs(request.visibility),
    });
  } catch (err) {
    throw explainStartError(err);
  }
}

/** "started <id>" and where to watch it, or the ids as JSON. */
export function reportStarted(ctx: CliContext, handle: StartedHandle, hint?: string): void {
  const url = workflowUrl(ctx.target, handle.workflowId);
  ctx.emit({ workflowId: handle.workflowId, runId: handle.firstExecutionRunId, url });
  ctx.say(`started ${handle.workflowId}`);
  if (url) ctx.say(`  Web UI: ${url}`);
  if (hint) ctx.say(`  ${hint}`);
}
