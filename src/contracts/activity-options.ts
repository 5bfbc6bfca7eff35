import type { ActivityOptions, LocalActivityOptions, RetryPolicy } from '@temporalio/common';
import { NON_RETRYABLE_ERROR_TYPES } from './errors';
import { CONTROL_TASK_QUEUE, hostTaskQueue } from './queues';

/** Retries forever on transient errors; a request that is wrong (our error types) is never retried. */
export const RETRY: RetryPolicy = {
  initialInterval: '1s',
  backoffCoefficient: 2,
  maximumInterval: '30s',
  nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES,
};

/**
 * For steps that have an undo (everything before a migration's switch): give up after a while so the
 * workflow can roll back instead of waiting forever on, say, a host agent that is down.
 */
export const BOUNDED: Pick<ActivityOptions, 'retry' | 'scheduleToCloseTimeout'> = {
  retry: { ...RETRY, maximumAttempts: 5 },
  scheduleToCloseTimeout: '5 minutes',
};

/** Inventory and placement: quick, on the control-plane queue. */
export const CONTROL_ACTIVITY_OPTIONS: ActivityOptions = {
  taskQueue: CONTROL_TASK_QUEUE,
  startToCloseTimeout: '30s',
  retry: RETRY,
};

/**
 * Quick inventory reads a workflow needs before anything else: run inside its workflow task, they
 * spare a round trip through the server (a workflow task and an activity task, 20-30 ms here).
 */
export const LOCAL_CONTROL_ACTIVITY_OPTIONS: LocalActivityOptions = {
  startToCloseTimeout: '30s',
  retry: RETRY,
};

/** Activities that touch a host's data run on that host's own queue, served by its agent. */
export function hostActivityOptions(hostId: string): ActivityOptions {
  return { taskQueue: hostTaskQueue(hostId), startToCloseTimeout: '60s', retry: RETRY };
}

/** Whole-image work on a host (writing a fleet's images, import, export) takes minutes and heartbeats. */
export const LONG_HOST_ACTIVITY: Pick<ActivityOptions, 'startToCloseTimeout' | 'heartbeatTimeout'> = {
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '30s',
};
