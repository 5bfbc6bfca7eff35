import { CommanderError } from 'commander';

/** A shutdown signal arrived while a long command was still starting or working. */
export class Interrupted extends Error {
  constructor(signal: NodeJS.Signals) {
    super(`interrupted (${signal})`);
  }
}

/** Exit code: 130 after Ctrl-C as shells do, 1 for every other error. */
export function exitCodeFor(err: unknown): number {
  return err instanceof Interrupted ? 130 : 1;
}

/**
 * One line for the operator: the innermost cause that says what went wrong (an activity's own
 * "instance i-9 not found" rather than "workflow execution failed").
 */
export function errorLine(err: unknown): string {
  if (err instanceof CommanderError) return err.message.replace(/^error:\s*/i, '');
  let current: unknown = err;
  let message = describe(err);
  // WorkflowFailedError → ApplicationFailure / ActivityFailure → ApplicationFailure: take the deepest.
  for (let depth = 0; depth < 8 && isWrapper(current); depth += 1) {
    current = (current as { cause?: unknown }).cause;
    if (current === undefined || current === null) break;
    const inner = describe(current);
    if (inner) message = inner;
  }
  return message
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)
    .join(' ');
}

function describe(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

const WRAPPERS = new Set([
  'WorkflowFailedError',
  'WorkflowUpdateFailedError',
  'ActivityFailure',
  'ChildWorkflowFailure',
]);

function isWrapper(err: unknown): boolean {
  if (!(err instanceof Error) || !('cause' in err) || !err.cause) return false;
  return WRAPPERS.has(err.name) || WRAPPERS.has(err.constructor.name);
}

/** Turns a server complaint about unknown search attributes into what to do about it. */
export function explainStartError(err: unknown): unknown {
  const line = errorLine(err);
  if (/search attribute/i.test(line)) {
    return new Error(
      `${line}: register rehome's search attributes on this namespace (InstanceId, HostId, Account, Operation, Phase as Keyword), e.g. \`temporal operator search-attribute create --name InstanceId --type Keyword\``,
    );
  }
  return err;
}
