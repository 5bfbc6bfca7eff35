import { ActivityFailure, ApplicationFailure } from '@temporalio/common';

/**
 * Failure types shared by activities and workflows. All of them mean "the request is wrong", so
 * retrying cannot help: they are thrown non-retryable and listed in every retry policy.
 */
export const ErrorType = {
  InvalidInput: 'InvalidInput',
  NotFound: 'NotFound',
  NoCapacity: 'NoCapacity',
  InvalidState: 'InvalidState',
  Forbidden: 'Forbidden',
  DataIntegrity: 'DataIntegrity',
} as const;
export type ErrorType = (typeof ErrorType)[keyof typeof ErrorType];

export const NON_RETRYABLE_ERROR_TYPES: string[] = Object.values(ErrorType);

function failure(type: ErrorType, message: string): ApplicationFailure {
  return ApplicationFailure.create({ type, message, nonRetryable: true });
}

export const invalidInput = (message: string) => failure(ErrorType.InvalidInput, message);
export const notFound = (message: string) => failure(ErrorType.NotFound, message);
export const noCapacity = (message: string) => failure(ErrorType.NoCapacity, message);
export const invalidState = (message: string) => failure(ErrorType.InvalidState, message);
export const forbidden = (message: string) => failure(ErrorType.Forbidden, message);
export const dataIntegrity = (message: string) => failure(ErrorType.DataIntegrity, message);

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

/** The message an operator should read for a failure: the surfaced cause's, not a wrapper's. */
export function errorMessage(err: unknown): string {
  const surfaced = surfaceFailure(err);
  return surfaced instanceof Error ? surfaced.message : String(surfaced);
}
