import { readdirSync } from 'node:fs';
import { ChunkHasher, chunkHashes } from '../../src/fleet/chunk-hasher';

const threads = () => readdirSync('/proc/self/task').length;

describe('ChunkHasher', () => {
  it('starts its workers ahead of the first call when asked, once, and close() stops them', async () => {
    const before = threads();
    const hasher = new ChunkHasher(2);
    hasher.start();
    hasher.start();
    expect(threads()).toBe(before + 2);
    const data = ChunkHasher.sharedBuffer(4 * 1024 * 1024).fill(7);
    expect(await hasher.hashChunks(data, 65536)).toEqual(chunkHashes(data, 65536));
    expect(threads()).toBe(before + 2); // the call used the started workers
    await hasher.close();
    expect(threads()).toBe(before);
  });
});
