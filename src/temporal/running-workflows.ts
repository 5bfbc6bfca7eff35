import { WorkflowNotFoundError, type Client } from '@temporalio/client';

/** Workflow ids described at once: enough to be quick, few enough not to flood the server. */
const DESCRIBE_CONCURRENCY = 8;

/**
 * Which of `ids` are running: a workflow not found, or closed, is not. Any other error (the server
 * cannot be reached, say) is thrown: "not running" must never be a guess, since fleet check reports
 * what a workflow that is not running left behind.
 */
export async function runningWorkflows(client: Client, ids: string[]): Promise<Set<string>> {
  const running = new Set<string>();
  for (let n = 0; n < ids.length; n += DESCRIBE_CONCURRENCY) {
    await Promise.all(
      ids.slice(n, n + DESCRIBE_CONCURRENCY).map(async (id) => {
        try {
          const description = await client.workflow.getHandle(id).describe();
          if (description.status.name === 'RUNNING') running.add(id);
        } catch (err) {
          if (!(err instanceof WorkflowNotFoundError)) throw err;
        }
      }),
    );
  }
  return running;
}
