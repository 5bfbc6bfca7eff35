import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, readdirSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorType } from '../../src/contracts';
import { sha256Hex, transferHash } from '../../src/fleet/hashing';
import { HostStore, type VolumeMeta } from '../../src/fleet/host-store';
import { fillPattern, patternBytes } from '../../src/fleet/pattern';
import { expectFailure } from '../helpers/failures';

const KiB = 1024;

function meta(volumeId: string, sizeBytes: number, blockSize = 64 * KiB): VolumeMeta {
  return { volumeId, instanceId: 'i-1', sizeBytes, blockSize, userData: false };
}

describe('pattern', () => {
  it('is deterministic and seekable at any byte offset', () => {
    const whole = patternBytes('seed-a', 4096);
    expect(patternBytes('seed-a', 4096).equals(whole)).toBe(true);
    expect(patternBytes('seed-b', 4096).equals(whole)).toBe(false);
    for (const offset of [1, 15, 16, 17, 1000, 4000]) {
      const part = Buffer.alloc(4096 - offset);
      fillPattern('seed-a', part, offset);
      expect(part.equals(whole.subarray(offset))).toBe(true);
    }
  });

  it('does not look like zeros', () => {
    const bytes = patternBytes('x', 1 << 16);
    expect(new Set(bytes).size).toBeGreaterThan(200);
  });
});

describe('hashing', () => {
  it('gives the same transfer hash for the same bytes wherever they sit in memory', () => {
    const data = patternBytes('h', 3 * 65536);
    const copy = Buffer.concat([Buffer.alloc(7), data]).subarray(7);
    expect(transferHash(copy)).toBe(transferHash(data));
    expect(transferHash(data)).toMatch(/^[0-9a-f]{16}$/);
    const changed = Buffer.from(data);
    changed[12345] ^= 1;
    expect(transferHash(changed)).not.toBe(transferHash(data));
    expect(sha256Hex(Buffer.from('abc'))).toBe(
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
    );
  });
});

describe('HostStore', () => {
  let dir: string;
  let store: HostStore;

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rehome-store-'));
    store = new HostStore(dir, 'h-1');
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('lays volumes out as raw images under hosts/<hostId>/volumes', () => {
    expect(store.root).toBe(path.join(dir, 'hosts', 'h-1'));
    expect(store.imagePath('v-1')).toBe(path.join(dir, 'hosts', 'h-1', 'volumes', 'v-1.img'));
    expect(store.metaPath('v-1')).toBe(path.join(dir, 'hosts', 'h-1', 'volumes', 'v-1.json'));
    // Nothing is created until something is written.
    expect(existsSync(store.root)).toBe(false);
    expect(store.listVolumes()).toEqual([]);
  });

  it('creates a zero volume as a sparse image of the exact size', async () => {
    await store.createVolume(meta('v-zero', 256 * KiB), 'zero');
    const image = readFileSync(store.imagePath('v-zero'));
    expect(image.length).toBe(256 * KiB);
    expect(image.equals(Buffer.alloc(256 * KiB))).toBe(true);
    expect(store.hasVolume('v-zero')).toBe(true);
    expect(store.readMeta('v-zero')).toEqual(meta('v-zero', 256 * KiB));
    expect(store.listVolumes()).toEqual(['v-zero']);
  });

  it('creates a pattern volume that fillPattern regenerates, with a partial last block', async () => {
    const size = 3 * 64 * KiB + 1536; // last block is 1.5 KiB
    await store.createVolume(meta('v-pat', size), 'pattern');
    const image = readFileSync(store.imagePath('v-pat'));
    expect(image.length).toBe(size);
    expect(image.equals(patternBytes('vol:v-pat', size))).toBe(true);

    const vol = await store.openVolume('v-pat');
    try {
      expect(vol.sizeBytes).toBe(size);
      const tail = await vol.read(3 * 64 * KiB, 1536);
      expect(tail.equals(patternBytes('vol:v-pat', 1536, 3 * 64 * KiB))).toBe(true);
      expect((await vol.readBlocks(3, 1)).length).toBe(1536);
    } finally {
      await vol.close();
    }
  });

  it('create is idempotent and refuses a different shape under the same id', async () => {
    await store.createVolume(meta('v-1', 128 * KiB), 'pattern');
    const vol = await store.openVolume('v-1');
    await vol.write(0, Buffer.alloc(512, 7));
    await vol.close();
    await store.createVolume(meta('v-1', 128 * KiB), 'pattern'); // no-op: the write survives
    expect(readFileSync(store.imagePath('v-1')).subarray(0, 512).equals(Buffer.alloc(512, 7))).toBe(true);
    const failure = await expectFailure(
      store.createVolume(meta('v-1', 256 * KiB), 'zero'),
      ErrorType.InvalidState,
    );
    expect(failure.message).toContain('v-1');
    expect(readFileSync(store.imagePath('v-1')).length).toBe(128 * KiB);
  });

  it('reads and writes by offset, and rejects ranges outside the volume', async () => {
    await store.createVolume(meta('v-io', 64 * KiB + 512), 'zero');
    const vol = await store.openVolume('v-io');
    try {
      const data = patternBytes('w', 1500);
      await vol.write(64 * KiB - 1000, data);
      expect((await vol.read(64 * KiB - 1000, 1500)).equals(data)).toBe(true);
      await expectFailure(vol.read(64 * KiB, 513), ErrorType.InvalidInput);
      await expectFailure(vol.read(-1, 10), ErrorType.InvalidInput);
      await expectFailure(vol.write(64 * KiB + 1, Buffer.alloc(512)), ErrorType.InvalidInput);
      await expectFailure(vol.readBlocks(1, 2), ErrorType.InvalidInput);
      // The rejected write changed nothing.
      expect(readFileSync(store.imagePath('v-io')).length).toBe(64 * KiB + 512);
      expect(
        readFileSync(store.imagePath('v-io'))
          .subarray(64 * KiB + 500)
          .equals(Buffer.alloc(12)),
      ).toBe(true);
    } finally {
      await vol.close();
    }
  });

  it('rejects impossible sizes and malformed ids before touching the disk', async () => {
    await expectFailure(store.createVolume(meta('v-odd', 1000), 'zero'), ErrorType.InvalidInput);
    await expectFailure(store.createVolume(meta('v-neg', -512), 'zero'), ErrorType.InvalidInput);
    await expectFailure(store.createVolume(meta('v-bs', 64 * KiB, 1000), 'zero'), ErrorType.InvalidInput);
    await expectFailure(store.createVolume(meta('../x', 64 * KiB), 'zero'), ErrorType.InvalidInput);
    await expectFailure(() => store.imagePath('../x'), ErrorType.InvalidInput);
    await expectFailure(() => store.metaPath('a/b'), ErrorType.InvalidInput);
    await expectFailure(store.deleteVolume('../../etc'), ErrorType.InvalidInput);
    await expectFailure(() => new HostStore(dir, '../evil'), ErrorType.InvalidInput);
    await expectFailure(() => store.readMeta('v-none'), ErrorType.NotFound);
    await expectFailure(store.openVolume('v-none'), ErrorType.NotFound);
    expect(existsSync(path.join(dir, 'hosts'))).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('deleteVolume removes image and sidecar and is idempotent', async () => {
    await store.createVolume(meta('v-del', 64 * KiB), 'zero');
    await store.deleteVolume('v-del');
    expect(store.hasVolume('v-del')).toBe(false);
    expect(existsSync(store.imagePath('v-del'))).toBe(false);
    await store.deleteVolume('v-del');
    await store.deleteVolume('v-never');
    expect(store.listVolumes()).toEqual([]);
  });

  it('import and export round trip byte-identical, and a retried import is a no-op', async () => {
    const size = 5 * 64 * KiB + 512;
    const original = patternBytes('user-disk', size);
    const src = path.join(dir, 'disk.img');
    writeFileSync(src, original);
    const progress: number[] = [];
    const imported = await store.importImage({ ...meta('v-imp', size), userData: true }, src, (b) =>
      progress.push(b),
    );
    expect(imported.sha256).toBe(sha256Hex(original));
    expect(progress[progress.length - 1]).toBe(size);
    expect(readFileSync(store.imagePath('v-imp')).equals(original)).toBe(true);
    expect(store.readMeta('v-imp').userData).toBe(true);

    const again = await store.importImage({ ...meta('v-imp', size), userData: true }, src);
    expect(again.sha256).toBe(imported.sha256);

    const vol = await store.openVolume('v-imp');
    const out = path.join(dir, 'out.img');
    const exported = await store.exportImage(vol, out);
    await vol.close();
    expect(exported).toEqual({ sha256: sha256Hex(original), sizeBytes: size });
    expect(readFileSync(out).equals(original)).toBe(true);
    expect(readdirSync(dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('import refuses a file of the wrong size or a missing file and leaves nothing behind', async () => {
    const src = path.join(dir, 'disk.img');
    writeFileSync(src, Buffer.alloc(64 * KiB));
    await expectFailure(store.importImage(meta('v-a', 128 * KiB), src), ErrorType.InvalidInput);
    await expectFailure(
      store.importImage(meta('v-a', 64 * KiB), path.join(dir, 'nope.img')),
      ErrorType.NotFound,
    );
    await expectFailure(store.importImage(meta('../v-a', 64 * KiB), src), ErrorType.InvalidInput);
    expect(store.hasVolume('v-a')).toBe(false);
    expect(existsSync(store.imagePath('v-a'))).toBe(false);
  });

  it('removes the temp files of writers that died, and only those, before writing a volume', async () => {
    const volumesDir = path.dirname(store.imagePath('v-t'));
    await store.createVolume(meta('v-other', 64 * KiB), 'zero');
    // pid 2^22 + 1 is above Linux's pid_max limit, so no process has it.
    const dead = `v-t.img.tmp-${2 ** 22 + 1}-0badf00d`;
    const live = `v-t.map.tmp-${process.pid}-0badf00d`;
    const unrelated = `v-other.img.tmp-${2 ** 22 + 1}-0badf00d`;
    for (const name of [dead, live, unrelated]) writeFileSync(path.join(volumesDir, name), 'x');
    await store.createVolume(meta('v-t', 64 * KiB), 'zero');
    expect(
      readdirSync(volumesDir)
        .filter((n) => n.includes('.tmp-'))
        .sort(),
    ).toEqual([unrelated, live].sort());
    await store.deleteVolume('v-t');
    expect(readdirSync(volumesDir).filter((n) => n.includes('.tmp-'))).toEqual([unrelated]);
  });

  it('export to a missing directory fails clearly', async () => {
    await store.createVolume(meta('v-x', 64 * KiB), 'zero');
    const vol = await store.openVolume('v-x');
    try {
      await expectFailure(
        store.exportImage(vol, path.join(dir, 'no-such-dir', 'out.img')),
        ErrorType.InvalidInput,
      );
    } finally {
      await vol.close();
    }
  });
});
