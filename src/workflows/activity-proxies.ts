import { proxyActivities, type ActivityOptions, type RetryPolicy } from '@temporalio/workflow';
import { CONTROL_TASK_QUEUE, hostTaskQueue, NON_RETRYABLE_ERROR_TYPES } from '../contracts';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';

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

export function controlActivities(options: Partial<ActivityOptions> = {}) {
  return proxyActivities<ControlActivities>({
    taskQueue: CONTROL_TASK_QUEUE,
    startToCloseTimeout: '30s',
    retry: RETRY,
    ...options,
  });
}

/** Activities that touch a host's data run on that host's own queue, served by its agent. */
export function hostActivities(hostId: string, options: Partial<ActivityOptions> = {}) {
  return proxyActivities<HostActivities>({
    taskQueue: hostTaskQueue(hostId),
    startToCloseTimeout: '60s',
    retry: RETRY,
    ...options,
  });
}
