import { readdirSync, readFileSync } from 'node:fs';
import { ChunkHasher, chunkHashes } from '../../src/fleet/chunk-hasher';

// Node's own threads, by id. Jest runs every suite in this one process, and the Temporal native
// runtime an earlier suite started keeps a tokio pool whose threads come and go on their own:
// counting every thread of the process made this test fail whenever one of them exited or spawned.
const nodeThreads = (): Set<string> => {
  const name = readFileSync('/proc/self/comm', 'utf8');
  return new Set(
    readdirSync('/proc/self/task').filter((tid) => {
      try {
        return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8') === name;
      } catch {
        return false; // exited while listed
      }
    }),
  );
};
const without = (a: Set<string>, b: Set<string>) => [...a].filter((tid) => !b.has(tid));

describe('ChunkHasher', () => {
  it('starts its workers ahead of the first call when asked, once, and close() stops them', async () => {
    const before = nodeThreads();
    const hasher = new ChunkHasher(2);
    hasher.start();
    hasher.start();
    const workers = without(nodeThreads(), before);
    expect(workers).toHaveLength(2);
    const data = ChunkHasher.sharedBuffer(4 * 1024 * 1024).fill(7);
    expect(await hasher.hashChunks(data, 65536)).toEqual(chunkHashes(data, 65536));
    const afterCall = nodeThreads();
    expect(workers.every((tid) => afterCall.has(tid))).toBe(true);
    expect(without(afterCall, before)).toHaveLength(2); // the call used the started workers
    await hasher.close();
    const afterClose = nodeThreads();
    expect(workers.filter((tid) => afterClose.has(tid))).toEqual([]);
  });
});
