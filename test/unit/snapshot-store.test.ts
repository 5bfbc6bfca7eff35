import { spawn } from 'node:child_process';
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
  existsSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorType, type SnapshotUploadMeta } from '../../src/contracts';
import { ChunkHasher, chunkHashes } from '../../src/fleet/chunk-hasher';
import { fileRefOf } from '../../src/fleet/file-range';
import { FileObjectStore, objectStoreRoot } from '../../src/fleet/object-store';
import { patternBytes } from '../../src/fleet/pattern';
import { SnapshotStore, type SnapshotWriter } from '../../src/fleet/snapshot-store';
import { expectFailure } from '../helpers/failures';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;

function meta(snapshotId: string, over: Partial<SnapshotUploadMeta> = {}): SnapshotUploadMeta {
  return {
    snapshotId,
    account: 'acct-1',
    instanceId: 'i-1',
    volumeId: 'v-1',
    sizeBytes: 4 * MiB,
    blockSize: BLOCK,
    sourceEvent: 'manual',
    createdAt: '2025-03-01T10:00:00.000Z',
    ...over,
  };
}

/** A ReadAt over an in-memory volume image. */
function reader(image: Buffer) {
  return async (position: number, target: Buffer) =>
    image.copy(target, 0, position, position + target.length);
}

/** A copy of the image with the given 64 KiB blocks overwritten by new content. */
function changeBlocks(image: Buffer, blocks: number[], seed = 'changed'): Buffer {
  const out = Buffer.from(image);
  for (const b of blocks) patternBytes(`${seed}-${b}`, BLOCK).copy(out, b * BLOCK);
  return out;
}

/** Bytes of all stored packs (the chunk data the store keeps). */
function packBytes(root: string, account: string): number {
  const dir = path.join(root, account, 'packs');
  if (!existsSync(dir)) return 0;
  let total = 0;
  for (const sub of readdirSync(dir)) {
    for (const f of readdirSync(path.join(dir, sub))) {
      if (f.endsWith('.pack')) total += statSync(path.join(dir, sub, f)).size;
    }
  }
  return total;
}

function packFiles(root: string, account: string): string[] {
  const dir = path.join(root, account, 'packs');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((sub) =>
    readdirSync(path.join(dir, sub))
      .filter((f) => f.endsWith('.pack'))
      .map((f) => path.join(dir, sub, f)),
  );
}

describe('SnapshotStore', () => {
  let dir: string;
  let root: string;
  let store: SnapshotStore;
  const others: SnapshotStore[] = [];

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rehome-snapshots-'));
    root = objectStoreRoot(dir);
    store = new SnapshotStore(new FileObjectStore(root));
  });

  afterEach(async () => {
    await store.close();
    for (const s of others.splice(0)) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Another store on the same directory, as a restarted process would open it. */
  function reopenedStore(): SnapshotStore {
    const s = new SnapshotStore(new FileObjectStore(root));
    others.push(s);
    return s;
  }

  async function snapshot(m: SnapshotUploadMeta, image: Buffer, s = store) {
    const writer = await s.openUpload(m);
    await writer.uploadFrom(reader(image), { batchBytes: MiB });
    return writer.commit();
  }

  async function readWhole(account: string, snapshotId: string, s = store): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const { data } of s.readAll(account, snapshotId, { batchChunks: 7 })) parts.push(data);
    return Buffer.concat(parts);
  }

  it('round-trips a volume byte for byte, short last chunk included, and describes it in the manifest', async () => {
    const sizeBytes = 4 * MiB + 4096; // the last chunk is 4 KiB
    const image = patternBytes('round-trip', sizeBytes);
    const info = await snapshot(meta('snap-1', { sizeBytes, sourceEvent: 'migration:m-7' }), image);
    expect(info).toEqual({
      snapshotId: 'snap-1',
      account: 'acct-1',
      instanceId: 'i-1',
      volumeId: 'v-1',
      sizeBytes,
      blockSize: BLOCK,
      chunkSize: BLOCK,
      chunkCount: 65,
      hashAlgorithm: 'blake3',
      sourceEvent: 'migration:m-7',
      createdAt: '2025-03-01T10:00:00.000Z',
      bytesUploaded: sizeBytes,
      bytesTotal: sizeBytes,
    });
    const manifest = await store.get('acct-1', 'snap-1');
    expect(manifest.chunks).toHaveLength(65);
    expect(manifest.chunks[64]).toMatch(/^[0-9a-f]{64}$/);
    expect((await readWhole('acct-1', 'snap-1')).equals(image)).toBe(true);
    const middle = await store.readChunks('acct-1', 'snap-1', 63, 2);
    expect(middle.equals(image.subarray(63 * BLOCK))).toBe(true);
    // A store opened afresh (another process) reads it too.
    expect((await readWhole('acct-1', 'snap-1', reopenedStore())).equals(image)).toBe(true);
  });

  it('hashes large batches on worker threads with the same result as inline', async () => {
    const image = patternBytes('workers', 8 * MiB);
    const writer = await store.openUpload(meta('snap-w', { sizeBytes: 8 * MiB }));
    expect(await writer.putBlocks(0, image)).toBe(8 * MiB); // one 8 MiB call: hashed by workers
    await writer.commit();
    const hasher = new ChunkHasher(0); // inline only
    const inline = await hasher.hashChunks(image, BLOCK);
    await hasher.close();
    const chunks = (await store.get('acct-1', 'snap-w')).chunks;
    expect(chunks.join('')).toBe(inline.toString('hex'));
    expect((await store.readChunks('acct-1', 'snap-w', 0, 128)).equals(image)).toBe(true);
  });

  it('hashes and stores ranges of a file larger than 4 GiB in place (the largest buffer a view can be)', async () => {
    const file = path.join(dir, 'large.img');
    const at = 5 * 1024 * MiB + 3 * BLOCK; // past 4 GiB, and not on a window boundary
    const data = patternBytes('far', 40 * MiB); // three tasks for the workers
    const fh = await open(file, 'w+');
    const out = await open(path.join(dir, 'large.pack'), 'w+');
    const hasher = new ChunkHasher(2);
    try {
      await fh.truncate(6 * 1024 * MiB); // sparse: no disk space
      await fh.write(data, 0, data.length, at);
      const range = { ...(await fileRefOf(fh)), position: at, length: data.length };
      const inline = chunkHashes(data, BLOCK);
      expect((await hasher.hashFileChunks(range, BLOCK)).equals(inline)).toBe(true);
      const stored = await hasher.storeFileChunks(range, BLOCK, await fileRefOf(out));
      expect(stored.hashes.equals(inline)).toBe(true);
      expect([...stored.written].every((w) => w === 1)).toBe(true);
      const { buffer } = await out.read(Buffer.alloc(data.length), 0, data.length, 0);
      expect(buffer.equals(data)).toBe(true);
    } finally {
      await hasher.close();
      await out.close();
      await fh.close();
    }
  });

  /** The image written to a file, lent batch by batch as a capture lends it, with `overrides` laid over. */
  async function lentSnapshot(m: SnapshotUploadMeta, file: string, overrides = new Map<number, Buffer>()) {
    const fh = await open(file, 'r');
    try {
      const ref = await fileRefOf(fh);
      const writer = await store.openUpload(m);
      await writer.uploadLent(
        async (position, length, _scratch, use) => {
          const mine = new Map<number, Buffer>();
          for (const [at, data] of overrides)
            if (at >= position && at < position + length) mine.set(at - position, data);
          await use({ range: { ...ref, position, length }, overrides: mine });
        },
        { batchBytes: 2 * MiB, inFlight: 2 },
      );
      return await writer.commit();
    } finally {
      await fh.close();
    }
  }

  it('stores bytes lent in place (hashed from the page cache) exactly as read ones', async () => {
    const sizeBytes = 6 * MiB + 4096; // a short last chunk, batches hashed by workers and inline
    const image = patternBytes('lent', sizeBytes);
    const file = path.join(dir, 'lent.img');
    writeFileSync(file, image);
    // Blocks written after a capture's instant come as overrides: the snapshot holds the old bytes.
    const atInstant = changeBlocks(image, [2, 40]);
    const overrides = new Map([
      [2 * BLOCK, atInstant.subarray(2 * BLOCK, 3 * BLOCK)],
      [40 * BLOCK, atInstant.subarray(40 * BLOCK, 41 * BLOCK)],
    ]);
    const lent = await lentSnapshot(meta('snap-lent', { sizeBytes }), file, overrides);
    expect(lent.bytesUploaded).toBe(sizeBytes);
    expect((await readWhole('acct-1', 'snap-lent')).equals(atInstant)).toBe(true);
    expect(readFileSync(file).equals(image)).toBe(true); // the lent file itself is untouched

    // The same bytes read into buffers name the same chunks, and dedupe against the lent ones.
    const read = await snapshot(meta('snap-read', { sizeBytes }), atInstant);
    expect(read.bytesUploaded).toBe(0);
    expect((await store.get('acct-1', 'snap-read')).chunks).toEqual(
      (await store.get('acct-1', 'snap-lent')).chunks,
    );
    // And a lent upload dedupes against stored chunks the same way: only the two overridden blocks differ.
    const again = await lentSnapshot(meta('snap-lent-2', { sizeBytes }), file);
    expect(again.bytesUploaded).toBe(2 * BLOCK);
    expect((await readWhole('acct-1', 'snap-lent-2')).equals(image)).toBe(true);
  });

  it("stores a volume's first snapshot as it hashes it, and drops again what the account had already", async () => {
    // Another volume's snapshot holds 16 of the blocks already; 32 blocks are zeros (one chunk).
    const shared = patternBytes('shared', 16 * BLOCK);
    await snapshot(meta('snap-other', { volumeId: 'v-other', sizeBytes: 16 * BLOCK }), shared);
    const before = packFiles(root, 'acct-1');
    const image = Buffer.concat([
      patternBytes('first-a', 16 * BLOCK),
      shared,
      Buffer.alloc(32 * BLOCK),
      patternBytes('first-b', 64 * BLOCK),
    ]);
    const file = path.join(dir, 'first.img');
    writeFileSync(file, image);
    const overrides = new Map([[70 * BLOCK, Buffer.alloc(BLOCK, 7)]]); // written since the instant
    const atInstant = Buffer.from(image);
    overrides.get(70 * BLOCK)!.copy(atInstant, 70 * BLOCK);

    const info = await lentSnapshot(
      meta('snap-first', { volumeId: 'v-new', sizeBytes: 8 * MiB }),
      file,
      overrides,
    );
    expect(info.bytesUploaded).toBe((16 + 1 + 64) * BLOCK);
    expect((await readWhole('acct-1', 'snap-first')).equals(atInstant)).toBe(true);
    // Written at their offsets in the batch as they were hashed, then the known ones dropped: the
    // packs span more than they hold, and only what was new takes disk space.
    const packs = packFiles(root, 'acct-1').filter((f) => !before.includes(f));
    const size = packs.reduce((n, f) => n + statSync(f).size, 0);
    const allocated = packs.reduce((n, f) => n + statSync(f).blocks * 512, 0);
    expect(size).toBeGreaterThan(info.bytesUploaded);
    expect(allocated).toBe(info.bytesUploaded);
  });

  it('stores a lent block as of the instant even when a write lands on it after it was hashed', async () => {
    /** Runs `beforePackPut` once, right before the next pack is put: after the batch was hashed. */
    class HookedObjects extends FileObjectStore {
      beforePackPut?: () => void;
      async put(key: string, data: Parameters<FileObjectStore['put']>[1]): Promise<void> {
        const hook = key.endsWith('.pack') ? this.beforePackPut : undefined;
        if (hook) {
          this.beforePackPut = undefined;
          hook();
        }
        return super.put(key, data);
      }
    }
    const objects = new HookedObjects(root);
    const hooked = new SnapshotStore(objects);
    others.push(hooked);
    const sizeBytes = 4 * MiB;
    const image = patternBytes('late', sizeBytes);
    await snapshot(meta('snap-late-a', { sizeBytes }), image, hooked); // so the next one is incremental
    const atInstant = changeBlocks(image, [5, 9]);
    const file = path.join(dir, 'late.img');
    writeFileSync(file, atInstant);
    const fh = await open(file, 'r+');
    try {
      const ref = await fileRefOf(fh);
      const overrides = new Map<number, Buffer>();
      objects.beforePackPut = () => {
        // The guest writes new block 5 now: as a capture does, its old content becomes an override first.
        overrides.set(5 * BLOCK, atInstant.subarray(5 * BLOCK, 6 * BLOCK));
        writeSync(fh.fd, Buffer.alloc(BLOCK, 0xee), 0, BLOCK, 5 * BLOCK);
      };
      const writer = await hooked.openUpload(
        meta('snap-late-b', { sizeBytes, createdAt: '2025-03-02T10:00:00.000Z' }),
      );
      await writer.uploadLent(
        async (position, length, _scratch, use) => use({ range: { ...ref, position, length }, overrides }),
        { batchBytes: sizeBytes, inFlight: 1 },
      );
      const info = await writer.commit();
      expect(objects.beforePackPut).toBeUndefined(); // the write landed while the batch was lent
      expect(
        readFileSync(file)
          .subarray(5 * BLOCK, 6 * BLOCK)
          .equals(Buffer.alloc(BLOCK, 0xee)),
      ).toBe(true);
      expect(info.bytesUploaded).toBe(2 * BLOCK);
      expect((await readWhole('acct-1', 'snap-late-b', hooked)).equals(atInstant)).toBe(true);
    } finally {
      await fh.close();
    }
  });

  it('refuses to hash or store a lent range whose descriptor now names another file', async () => {
    const file = path.join(dir, 'gone.img');
    writeFileSync(file, patternBytes('gone', 2 * MiB));
    const fh = await open(file, 'r');
    const ref = await fileRefOf(fh);
    await fh.close();
    const other = await open(path.join(dir, 'other.img'), 'w+'); // may well reuse the descriptor number
    try {
      const writer = await store.openUpload(meta('snap-gone', { sizeBytes: 2 * MiB }));
      await expect(
        writer.putBlocks(0, { range: { ...ref, position: 0, length: 2 * MiB }, overrides: new Map() }),
      ).rejects.toThrow(/no longer names the file it was lent for|EBADF/);
      expect(packBytes(root, 'acct-1')).toBe(0);
    } finally {
      await other.close();
    }
  });

  it('stores a chunk once per account: a second snapshot with 1% of blocks changed uploads about 1%', async () => {
    const sizeBytes = 32 * MiB; // 512 blocks
    const image = patternBytes('incremental', sizeBytes);
    const first = await snapshot(meta('snap-a', { sizeBytes }), image);
    expect(first.bytesUploaded).toBe(sizeBytes);
    const stored = packBytes(root, 'acct-1');

    const changed = changeBlocks(image, [3, 77, 200, 301, 509]); // ~1% of 512 blocks
    const second = await snapshot(
      meta('snap-b', { sizeBytes, createdAt: '2025-03-02T10:00:00.000Z' }),
      changed,
    );
    expect(second.bytesUploaded).toBe(5 * BLOCK);
    expect(second.bytesUploaded / sizeBytes).toBeLessThanOrEqual(0.02);
    expect(packBytes(root, 'acct-1') - stored).toBe(5 * BLOCK);

    const same = await snapshot(
      meta('snap-c', { sizeBytes, createdAt: '2025-03-03T10:00:00.000Z' }),
      changed,
    );
    expect(same.bytesUploaded).toBe(0);
    expect((await readWhole('acct-1', 'snap-a')).equals(image)).toBe(true);
    expect((await readWhole('acct-1', 'snap-b')).equals(changed)).toBe(true);

    // Identical blocks within one volume (here all zeros) are stored once too.
    const zeros = await snapshot(meta('snap-z', { volumeId: 'v-2' }), Buffer.alloc(4 * MiB));
    expect(zeros.bytesUploaded).toBe(BLOCK);
    // Dedupe is per account: another account stores its own copy.
    const other = await snapshot(meta('snap-o', { account: 'acct-2', sizeBytes }), image);
    expect(other.bytesUploaded).toBe(sizeBytes);
  });

  it('detects a corrupted or missing chunk on read and never returns its bytes', async () => {
    const image = patternBytes('corrupt', 2 * MiB);
    const writer = await store.openUpload(meta('snap-1', { sizeBytes: 2 * MiB }));
    await writer.putBlocks(0, image); // one call: one pack, chunks in order
    await writer.commit();
    const manifest = await store.get('acct-1', 'snap-1');
    const [pack, ...none] = packFiles(root, 'acct-1');
    expect(none).toEqual([]);
    const bytes = readFileSync(pack);
    bytes[5 * BLOCK + 1234] ^= 0x40; // one bit of chunk 5 flips on disk
    writeFileSync(pack, bytes);

    await expectFailure(
      store.readChunks('acct-1', 'snap-1', 4, 3),
      ErrorType.DataIntegrity,
      new RegExp(`snapshot snap-1 chunk 5 is corrupt: .*expected blake3 ${manifest.chunks[5]}`),
    );
    const iterate = async () => {
      for await (const part of store.readAll('acct-1', 'snap-1')) expect(part).toBeDefined();
    };
    await expectFailure(iterate(), ErrorType.DataIntegrity, /chunk 5 is corrupt/);
    // Chunks around it are still served.
    expect((await store.readChunks('acct-1', 'snap-1', 0, 5)).equals(image.subarray(0, 5 * BLOCK))).toBe(
      true,
    );

    rmSync(pack);
    await expectFailure(
      store.readChunks('acct-1', 'snap-1', 0, 1),
      ErrorType.DataIntegrity,
      new RegExp(`snapshot snap-1 chunk 0 \\(blake3 ${manifest.chunks[0]}\\) is (missing|truncated)`),
    );
  });

  it("refuses another account's snapshot without saying whose it is, and changes nothing", async () => {
    const image = patternBytes('owner', MiB);
    await snapshot(meta('snap-1', { sizeBytes: MiB }), image);
    const notYours = /snapshot snap-1 does not belong to account acct-2/;
    for (const attempt of [
      () => store.get('acct-2', 'snap-1'),
      () => store.info('acct-2', 'snap-1'),
      () => store.readChunks('acct-2', 'snap-1', 0, 1),
      () => store.delete('acct-2', 'snap-1'),
      () => store.openUpload(meta('snap-1', { account: 'acct-2', sizeBytes: MiB })),
    ]) {
      const failure = await expectFailure(attempt, ErrorType.Forbidden, notYours);
      expect(failure.message).not.toContain('acct-1');
    }
    expect(await store.list({ account: 'acct-2' })).toEqual([]);
    expect(existsSync(path.join(root, 'acct-2'))).toBe(false);
    expect((await readWhole('acct-1', 'snap-1')).equals(image)).toBe(true);

    await expectFailure(store.get('acct-1', 'snap-nope'), ErrorType.NotFound, /snapshot snap-nope not found/);
    await expectFailure(store.readChunks('acct-1', 'snap-1', 16, 1), ErrorType.InvalidInput, /outside/);
  });

  it('collects chunks no snapshot references after a delete, keeping those a live snapshot shares', async () => {
    const sizeBytes = 4 * MiB; // 64 blocks, each snapshot stored as one pack (one putBlocks call)
    const a = patternBytes('gc-a', sizeBytes);
    const b = changeBlocks(
      a,
      Array.from({ length: 48 }, (_, i) => i + 16),
    ); // shares blocks 0-15 with a
    const c = patternBytes('gc-c', sizeBytes); // shares nothing
    const put = async (id: string, image: Buffer, day: number) => {
      const writer = await store.openUpload(meta(id, { createdAt: `2025-03-0${day}T00:00:00.000Z` }));
      await writer.putBlocks(0, image);
      return writer.commit();
    };
    await put('snap-a', a, 1);
    await put('snap-b', b, 2);
    await put('snap-c', c, 3);
    expect(packBytes(root, 'acct-1')).toBe(sizeBytes + 48 * BLOCK + sizeBytes);

    // c's pack has no live chunk left: deleted whole.
    const delC = await store.delete('acct-1', 'snap-c');
    expect(delC).toMatchObject({ snapshotId: 'snap-c', deleted: true });
    expect(delC.gc).toMatchObject({ packsDeleted: 1, packsRepacked: 0, bytesFreed: sizeBytes });
    expect(packBytes(root, 'acct-1')).toBe(sizeBytes + 48 * BLOCK);

    // A process that read b before the repack below still finds b's chunks after it.
    const elsewhere = reopenedStore();
    expect((await readWhole('acct-1', 'snap-b', elsewhere)).equals(b)).toBe(true);

    // a's pack keeps 16 of 64 chunks live (b's): below half live, so it is rewritten with those.
    const delA = await store.delete('acct-1', 'snap-a');
    expect(delA.gc).toMatchObject({ packsDeleted: 0, packsRepacked: 1, bytesFreed: 48 * BLOCK });
    expect(delA.gc.bytesLive).toBe(sizeBytes);
    expect(packBytes(root, 'acct-1')).toBe(sizeBytes);
    expect((await readWhole('acct-1', 'snap-b')).equals(b)).toBe(true);
    expect((await readWhole('acct-1', 'snap-b', elsewhere)).equals(b)).toBe(true);

    // Deleting again is quiet; deleting the last snapshot leaves no chunk data, and its sidecars go.
    await store.objects.put('acct-1/snapshots/snap-b.capture.json', Buffer.from('{}'));
    expect((await store.delete('acct-1', 'snap-a')).deleted).toBe(false);
    expect((await store.delete('acct-1', 'snap-b')).deleted).toBe(true);
    expect(packBytes(root, 'acct-1')).toBe(0);
    expect(await store.list({ account: 'acct-1' })).toEqual([]);
    expect(await store.objects.list('acct-1/snapshots/')).toEqual([]);
    await expectFailure(store.get('acct-1', 'snap-b'), ErrorType.NotFound);
  });

  it('does not collect chunks an open upload deduped against, even when their snapshot is deleted', async () => {
    const image = patternBytes('race', 2 * MiB);
    await snapshot(meta('snap-old', { sizeBytes: 2 * MiB }), image);
    const writer = await store.openUpload(
      meta('snap-new', { sizeBytes: 2 * MiB, createdAt: '2025-03-02T00:00:00.000Z' }),
    );
    expect(await writer.putBlocks(0, image)).toBe(0); // all deduped against snap-old's chunks

    // Another process deletes snap-old meanwhile: its GC must not run while the upload is open.
    const elsewhere = reopenedStore();
    const deleted = await elsewhere.delete('acct-1', 'snap-old');
    expect(deleted.deleted).toBe(true);
    expect(deleted.gc.skipped).toMatch(/upload of snapshot snap-new is open/);
    await expectFailure(store.delete('acct-1', 'snap-new'), ErrorType.InvalidState, /still being uploaded/);

    await writer.commit();
    expect((await readWhole('acct-1', 'snap-new', elsewhere)).equals(image)).toBe(true);
    const gc = await elsewhere.gc('acct-1');
    expect(gc.skipped).toBeUndefined();
    expect(gc.bytesLive).toBe(2 * MiB);
    expect((await readWhole('acct-1', 'snap-new')).equals(image)).toBe(true);
  });

  it('keeps the newest N snapshots of a volume and collects the rest', async () => {
    const ids: string[] = [];
    for (let day = 1; day <= 4; day++) {
      const id = `snap-${day}`;
      ids.push(id);
      const image = patternBytes(`retain-${day}`, MiB);
      await snapshot(meta(id, { sizeBytes: MiB, createdAt: `2025-03-0${day}T00:00:00.000Z` }), image);
    }
    await snapshot(
      meta('snap-other', { sizeBytes: MiB, volumeId: 'v-2', instanceId: 'i-2' }),
      Buffer.alloc(MiB),
    );
    expect((await store.list({ account: 'acct-1', volumeId: 'v-1' })).map((s) => s.snapshotId)).toEqual([
      'snap-4',
      'snap-3',
      'snap-2',
      'snap-1',
    ]);
    expect((await store.list({ account: 'acct-1', instanceId: 'i-2' })).map((s) => s.snapshotId)).toEqual([
      'snap-other',
    ]);

    const result = await store.retain('acct-1', 'v-1', 2);
    expect(result.deleted).toEqual(['snap-2', 'snap-1']);
    expect(result.kept).toEqual(['snap-4', 'snap-3']);
    expect(result.gc.bytesFreed).toBe(2 * MiB);
    expect((await store.list({ account: 'acct-1' })).map((s) => s.snapshotId)).toEqual([
      'snap-4',
      'snap-3',
      'snap-other',
    ]);
    expect(packBytes(root, 'acct-1')).toBe(2 * MiB + BLOCK);
    const again = await store.retain('acct-1', 'v-1', 2);
    expect(again.deleted).toEqual([]);
    expect(again.gc.skipped).toMatch(/nothing was deleted/); // no collection to pay for
    await expectFailure(store.retain('acct-1', 'v-1', 0), ErrorType.InvalidInput, /keepLast/);
  });

  it('resumes an upload dropped without commit (simulated crash) from what it made durable', async () => {
    const sizeBytes = 8 * MiB; // 128 chunks
    const image = patternBytes('resume', sizeBytes);
    const m = meta('snap-r', { sizeBytes });
    const first = await store.openUpload(m);
    expect(first.nextChunk).toBe(0);
    await first.putBlocks(0, image.subarray(0, 40 * BLOCK));
    await first.putBlocks(64, image.subarray(64 * BLOCK, 80 * BLOCK)); // out of order, leaving a gap
    // The process "dies": the writer is dropped, nothing committed.
    await expectFailure(store.get('acct-1', 'snap-r'), ErrorType.NotFound, /upload has not finished/);

    const again = await reopenedStore().openUpload(m);
    expect(again.nextChunk).toBe(40);
    expect(again.bytesUploaded).toBe(56 * BLOCK);
    await expect(again.commit()).rejects.toThrow(/incomplete: chunk 40 of 128 was never stored/);
    const progress: number[] = [];
    const uploaded = await again.uploadFrom(reader(image), {
      batchBytes: 8 * BLOCK,
      onProgress: (p) => void progress.push(p.nextChunk),
    });
    expect(uploaded).toBe((128 - 56) * BLOCK); // chunks 64-79 were found, not stored again
    expect(progress[progress.length - 1]).toBe(128);
    expect(progress).toEqual([...progress].sort((x, y) => x - y));
    const info = await again.commit();
    expect(info.bytesUploaded).toBe(sizeBytes);
    expect((await readWhole('acct-1', 'snap-r')).equals(image)).toBe(true);
    // The upload journal is gone once committed.
    expect(existsSync(path.join(root, 'acct-1', 'uploads'))).toBe(false);
  });

  it('starts over when asked: drops what earlier attempts journaled, keeps their chunks, and journals nothing', async () => {
    const sizeBytes = 2 * MiB; // 32 chunks
    const earlier = patternBytes('earlier-instant', sizeBytes);
    const m = meta('snap-o', { sizeBytes });
    const first = await store.openUpload(m);
    await first.putBlocks(0, earlier.subarray(0, 16 * BLOCK)); // an attempt of an earlier instant dies
    const uploads = path.join(root, 'acct-1', 'uploads', 'snap-o');
    expect(readdirSync(uploads).filter((f) => f.endsWith('.piece'))).toHaveLength(1);

    const now = changeBlocks(earlier, [3, 20]); // the volume as of this attempt's instant
    const again = await reopenedStore().openUpload(m, { startOver: true });
    expect(again.nextChunk).toBe(0); // nothing of the earlier instant is taken as done
    expect(readdirSync(uploads).filter((f) => f.endsWith('.piece'))).toEqual([]);
    // The earlier attempt's chunks are still there to dedupe against: only the 16 it never stored
    // and changed block 3 go up.
    expect(await again.uploadFrom(reader(now), { batchBytes: 4 * BLOCK })).toBe(17 * BLOCK);
    expect(readdirSync(uploads).filter((f) => f.endsWith('.piece'))).toEqual([]); // no journal
    await again.commit();
    expect((await readWhole('acct-1', 'snap-o')).equals(now)).toBe(true);
    expect(existsSync(path.join(root, 'acct-1', 'uploads'))).toBe(false);
  });

  it('clears an upload whose lock went stale (writer gone) and lets a reopened upload start over', async () => {
    const image = patternBytes('stale', MiB);
    const dead = await store.openUpload(meta('snap-s', { sizeBytes: MiB }));
    await dead.putBlocks(0, image.subarray(0, 8 * BLOCK));
    await new Promise((r) => setTimeout(r, 5));
    const impatient = new SnapshotStore(new FileObjectStore(root), { lockStaleMs: 1 });
    others.push(impatient);
    const gc = await impatient.gc('acct-1');
    expect(gc).toEqual({ packsDeleted: 1, packsRepacked: 0, bytesFreed: 8 * BLOCK, bytesLive: 0 });
    expect(existsSync(path.join(root, 'acct-1', 'uploads'))).toBe(false);
    expect(existsSync(path.join(root, 'acct-1', 'locks'))).toBe(false);

    const again = await store.openUpload(meta('snap-s', { sizeBytes: MiB }));
    expect(again.nextChunk).toBe(0);
    expect(await again.uploadFrom(reader(image))).toBe(MiB);
    await again.commit();
    expect((await readWhole('acct-1', 'snap-s', impatient)).equals(image)).toBe(true);
  });

  it('finds again everything a writer killed with SIGKILL had made durable', async () => {
    const sizeBytes = 16 * MiB; // 256 chunks
    const script = `
      const { FileObjectStore } = require('./src/fleet/object-store');
      const { SnapshotStore } = require('./src/fleet/snapshot-store');
      const { patternBytes } = require('./src/fleet/pattern');
      const image = patternBytes('killed', ${sizeBytes});
      const store = new SnapshotStore(new FileObjectStore(${JSON.stringify(root)}));
      (async () => {
        const writer = await store.openUpload(${JSON.stringify(meta('snap-k', { sizeBytes }))});
        await writer.uploadFrom(async (pos, target) => {
          await new Promise((r) => setTimeout(r, 3));
          return image.copy(target, 0, pos, pos + target.length);
        }, { batchBytes: ${4 * BLOCK}, onProgress: (p) => process.stdout.write('durable ' + p.nextChunk + '\\n') });
        process.stdout.write('finished\\n');
      })();
    `;
    const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', script], {
      cwd: path.resolve(__dirname, '../..'),
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let reported = 0;
    let finished = false;
    await new Promise<void>((resolve, reject) => {
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (text: string) => {
        for (const m of text.matchAll(/durable (\d+)/g)) reported = Math.max(reported, Number(m[1]));
        if (text.includes('finished')) finished = true;
        if (reported >= 64) child.kill('SIGKILL');
      });
      child.on('exit', () => resolve());
      child.on('error', reject);
    });
    expect(finished).toBe(false);
    expect(reported).toBeGreaterThanOrEqual(64);

    const image = patternBytes('killed', sizeBytes);
    const writer: SnapshotWriter = await store.openUpload(meta('snap-k', { sizeBytes }));
    expect(writer.nextChunk).toBeGreaterThanOrEqual(reported);
    await writer.uploadFrom(reader(image));
    const info = await writer.commit();
    // Chunks stored in the last moments before the kill, but not yet journalled, are found by
    // dedupe and so not counted as this snapshot's uploads: at most one batch per lane.
    expect(info.bytesUploaded).toBeLessThanOrEqual(sizeBytes);
    expect(info.bytesUploaded).toBeGreaterThanOrEqual(sizeBytes - 3 * 4 * BLOCK);
    expect((await readWhole('acct-1', 'snap-k')).equals(image)).toBe(true);
    // Whatever the kill left half-written (a pack without its index, temp files) is garbage.
    const gc = await store.gc('acct-1');
    expect(gc.skipped).toBeUndefined();
    expect(gc.bytesLive).toBe(sizeBytes);
    expect(packBytes(root, 'acct-1')).toBe(sizeBytes);
    expect((await readWhole('acct-1', 'snap-k')).equals(image)).toBe(true);
  });

  it('joins garbage collections asked for while one runs: ten deletions at once collect twice, all of them', async () => {
    const image = patternBytes('gc-join', MiB);
    for (let i = 0; i < 10; i++) {
      const writer = await store.openUpload(meta(`snap-g${i}`, { sizeBytes: MiB }));
      // A different first block each: every snapshot owns one chunk nobody else has.
      await writer.uploadFrom(reader(changeBlocks(image, [0], `seed-${i}`)));
      await writer.commit();
    }
    const collect = jest.spyOn(store as unknown as { collect: (a: string) => Promise<unknown> }, 'collect');
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => store.delete('acct-1', `snap-g${i}`)),
    );
    expect(results.every((r) => r.deleted)).toBe(true);
    expect(collect.mock.calls.length).toBeLessThanOrEqual(2);
    collect.mockRestore();
    // Every deleted snapshot's chunks are gone: the joined collection saw all ten deletions.
    expect(packBytes(root, 'acct-1')).toBe(0);
  });

  it('commits idempotently: a retried commit or a reopened upload returns the same snapshot', async () => {
    const image = patternBytes('idem', MiB);
    const m = meta('snap-i', { sizeBytes: MiB });
    const writer = await store.openUpload(m);
    await writer.uploadFrom(reader(image));
    const info = await writer.commit();
    expect(await writer.commit()).toEqual(info);
    const manifestFile = path.join(root, 'acct-1', 'snapshots', 'snap-i.json');
    const before = readFileSync(manifestFile);

    const retried = await reopenedStore().openUpload(m);
    expect(retried.done).toBe(true);
    expect(retried.nextChunk).toBe(16);
    expect(await retried.putBlocks(0, image.subarray(0, BLOCK))).toBe(0);
    expect(await retried.uploadFrom(reader(image))).toBe(0);
    expect(await retried.commit()).toEqual(info);
    expect(readFileSync(manifestFile).equals(before)).toBe(true);
    expect((await store.list({ account: 'acct-1' })).map((i) => i.snapshotId)).toEqual(['snap-i']);

    // Two attempts of one upload alive at once (a retry while the first still runs): the first
    // commit stands and the second returns it.
    const twin = patternBytes('twin', MiB);
    const slow = await store.openUpload(meta('snap-j', { sizeBytes: MiB }));
    const fast = await reopenedStore().openUpload(meta('snap-j', { sizeBytes: MiB }));
    await fast.uploadFrom(reader(twin));
    await slow.putBlocks(0, twin.subarray(0, 8 * BLOCK));
    const fastInfo = await fast.commit();
    await slow.putBlocks(8, twin.subarray(8 * BLOCK));
    expect(await slow.commit()).toEqual(fastInfo);
    expect((await readWhole('acct-1', 'snap-j')).equals(twin)).toBe(true);

    await expectFailure(
      store.openUpload(meta('snap-i', { sizeBytes: 2 * MiB })),
      ErrorType.InvalidInput,
      /snapshot snap-i already exists with sizeBytes 1048576, not 2097152/,
    );
  });

  it('aborts an upload: the id is free again and its chunks are collected', async () => {
    const writer = await store.openUpload(meta('snap-x', { sizeBytes: MiB }));
    await writer.putBlocks(0, patternBytes('abort', MiB));
    await writer.abort();
    await writer.abort();
    await expectFailure(writer.putBlocks(0, Buffer.alloc(BLOCK)), ErrorType.InvalidState, /was aborted/);
    await expectFailure(store.get('acct-1', 'snap-x'), ErrorType.NotFound);
    const gc = await store.gc('acct-1');
    expect(gc).toMatchObject({ packsDeleted: 1, bytesFreed: MiB, bytesLive: 0 });
    // Free for any account now.
    const other = await store.openUpload(meta('snap-x', { account: 'acct-2', sizeBytes: MiB }));
    await other.abort();
  });

  it('refuses bad ids, sizes and ranges before writing anything', async () => {
    const bad: [Partial<SnapshotUploadMeta>, RegExp][] = [
      [{ snapshotId: '../etc' }, /snapshotId "..\/etc" is not a valid id/],
      [{ snapshotId: 'Snap' }, /snapshotId/],
      [{ account: 'acct/1' }, /account "acct\/1" is not a valid id/],
      [{ instanceId: '' }, /instanceId/],
      [{ volumeId: 'v 1' }, /volumeId/],
      [{ sizeBytes: 0 }, /sizeBytes 0/],
      [{ sizeBytes: 1000 }, /sizeBytes 1000/],
      [{ sizeBytes: -512 }, /sizeBytes -512/],
      [{ blockSize: 100 }, /blockSize 100/],
      [{ chunkSize: 64 * MiB }, /chunkSize/],
      [{ sourceEvent: '' }, /sourceEvent/],
      [{ createdAt: 'yesterday' }, /createdAt "yesterday"/],
      [{ createdAt: '2025-03-01' }, /createdAt/],
    ];
    for (const [over, message] of bad) {
      await expectFailure(store.openUpload(meta('snap-1', over)), ErrorType.InvalidInput, message);
    }
    await expectFailure(store.openUpload(null as unknown as SnapshotUploadMeta), ErrorType.InvalidInput);
    await expectFailure(store.get('acct-1', 'BAD'), ErrorType.InvalidInput, /snapshotId "BAD"/);
    await expectFailure(store.get('../x', 'snap-1'), ErrorType.InvalidInput, /account/);
    await expectFailure(store.delete('acct-1', 'a/b'), ErrorType.InvalidInput);
    await expectFailure(store.readChunks('acct-1', 'x'.repeat(70), 0, 1), ErrorType.InvalidInput);
    await expectFailure(store.list({ account: 'acct-1', volumeId: 'V' }), ErrorType.InvalidInput, /volumeId/);
    await expectFailure(store.retain('acct-1', '..', 1), ErrorType.InvalidInput);
    expect(existsSync(root)).toBe(false);

    const writer = await store.openUpload(meta('snap-1', { sizeBytes: MiB }));
    await expectFailure(
      writer.putBlocks(0, Buffer.alloc(BLOCK + 512)),
      ErrorType.InvalidInput,
      /whole 65536-byte chunks/,
    );
    await expectFailure(
      writer.putBlocks(15, Buffer.alloc(2 * BLOCK)),
      ErrorType.InvalidInput,
      /outside snapshot snap-1/,
    );
    await expectFailure(writer.putBlocks(-1, Buffer.alloc(BLOCK)), ErrorType.InvalidInput);
    await expectFailure(
      writer.uploadFrom(reader(Buffer.alloc(MiB / 2))),
      ErrorType.InvalidInput,
      /volume ended/,
    );
    await writer.abort();
  });
});
