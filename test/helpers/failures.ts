import { ApplicationFailure } from '@temporalio/common';
import type { ErrorType } from '../../src/contracts';

/**
 * Checks that `caught` is the kind of failure the project promises for a wrong request: an
 * ApplicationFailure of `type`, non-retryable, and (when given) a message matching `message`.
 */
export function expectApplicationFailure(
  caught: unknown,
  type: ErrorType,
  message?: RegExp | string,
): ApplicationFailure {
  expect(caught).toBeInstanceOf(ApplicationFailure);
  const failure = caught as ApplicationFailure;
  expect(failure.type).toBe(type);
  expect(failure.nonRetryable).toBe(true);
  if (message !== undefined) expect(failure.message).toMatch(message);
  return failure;
}

/** The promise (or the function, sync or async) must fail as expectApplicationFailure describes. */
export async function expectFailure(
  action: Promise<unknown> | (() => unknown),
  type: ErrorType,
  message?: RegExp | string,
): Promise<ApplicationFailure> {
  let caught: unknown;
  try {
    await (typeof action === 'function' ? action() : action);
  } catch (err) {
    caught = err;
  }
  return expectApplicationFailure(caught, type, message);
}

/** For synchronous code (the SQLite inventory), so its tests need not become async. */
export function expectFailureSync(
  fn: () => unknown,
  type: ErrorType,
  message?: RegExp | string,
): ApplicationFailure {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  return expectApplicationFailure(caught, type, message);
}
