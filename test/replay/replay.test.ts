import { Worker } from '@temporalio/worker';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import fs from 'node:fs';
import path from 'node:path';
import { WorkflowType } from '../../src/contracts';

// protobufjs is a direct dependency so the SDK packages share one copy: historyFromJSON needs that.
// Histories recorded from real runs against the embedded dev server (`npm run record-histories`).
// Replaying them with today's workflow code catches any change that would break running workflows.
const dir = path.resolve(__dirname, '../histories');
const files = fs.readdirSync(dir).filter((f) => f.endsWith('.json'));

function workflowTypeOf(history: ReturnType<typeof historyFromJSON>): string | undefined {
  return history.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name ?? undefined;
}

describe('replay of recorded histories', () => {
  const histories = files.map((file) => ({
    workflowId: path.basename(file, '.json'),
    history: historyFromJSON(JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'))),
  }));

  it('has a recorded history for every workflow type', () => {
    const recorded = new Set(histories.map((h) => workflowTypeOf(h.history)));
    for (const type of Object.values(WorkflowType)) {
      expect(recorded).toContain(type);
    }
  });

  it('replays every history without nondeterminism', async () => {
    const failures: string[] = [];
    let replayed = 0;
    for await (const result of Worker.runReplayHistories(
      { workflowsPath: require.resolve('../../src/workflows'), replayName: 'rehome-replay' },
      histories,
    )) {
      replayed += 1;
      if (result.error) failures.push(`${result.workflowId}: ${result.error.message}`);
    }
    expect(failures).toEqual([]);
    expect(replayed).toBe(histories.length);
  });
});
