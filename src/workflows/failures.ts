import { ActivityFailure, ApplicationFailure } from '@temporalio/workflow';
import { NON_RETRYABLE_ERROR_TYPES } from '../contracts';

/**
 * An activity's own clear failure ("instance i-9 not found") becomes the workflow's failure, instead
 * of a generic "activity task failed" wrapper the operator has to dig through.
 */
export function surfaceFailure(err: unknown): unknown {
  if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure) {
    const cause = err.cause;
    if (cause.nonRetryable || NON_RETRYABLE_ERROR_TYPES.includes(cause.type ?? '')) return cause;
  }
  return err;
}
