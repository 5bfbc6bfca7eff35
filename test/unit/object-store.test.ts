import { fstatSync, mkdtempSync, readdirSync, rmSync, writeFileSync, writeSync, existsSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ErrorType } from '../../src/contracts';
import { assertObjectKey, FileObjectStore, objectStoreRoot } from '../../src/fleet/object-store';
import { expectFailure } from '../helpers/failures';

describe('FileObjectStore', () => {
  let dir: string;
  let objects: FileObjectStore;

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'rehome-objects-'));
    objects = new FileObjectStore(objectStoreRoot(dir));
  });

  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('puts, gets, ranges, lists and deletes objects under <dataDir>/object-store', async () => {
    await objects.put('acct-1/a/b.bin', Buffer.from('hello world'));
    await objects.put('acct-1/a/c.bin', [Buffer.from('con'), Buffer.from('cat')]);
    await objects.put('acct-2/x', Buffer.alloc(0));
    expect(existsSync(path.join(dir, 'object-store', 'acct-1', 'a', 'b.bin'))).toBe(true);

    expect((await objects.get('acct-1/a/b.bin'))?.toString()).toBe('hello world');
    expect((await objects.get('acct-1/a/c.bin'))?.toString()).toBe('concat');
    expect(await objects.get('acct-1/missing')).toBeUndefined();
    expect((await objects.getRange('acct-1/a/b.bin', 6, 5))?.toString()).toBe('world');
    expect((await objects.getRange('acct-1/a/b.bin', 6, 100))?.toString()).toBe('world');
    expect(await objects.getRange('acct-1/nope', 0, 1)).toBeUndefined();
    expect(await objects.has('acct-2/x')).toBe(true);
    expect(await objects.has('acct-2')).toBe(false); // a folder is not an object

    expect(await objects.list('acct-1/')).toEqual(['acct-1/a/b.bin', 'acct-1/a/c.bin']);
    expect(await objects.list('acct-1/a/b')).toEqual(['acct-1/a/b.bin']);
    expect(await objects.list('')).toEqual(['acct-1/a/b.bin', 'acct-1/a/c.bin', 'acct-2/x']);
    expect(await objects.list('acct-3/')).toEqual([]);

    await objects.put('acct-1/a/b.bin', Buffer.from('replaced'));
    expect((await objects.get('acct-1/a/b.bin'))?.toString()).toBe('replaced');

    await objects.delete('acct-1/a/b.bin');
    await objects.delete('acct-1/a/b.bin'); // idempotent
    await objects.delete('acct-1/a/c.bin');
    expect(await objects.list('acct-1/')).toEqual([]);
    // Emptied folders go too, so a deleted account leaves nothing behind.
    expect(readdirSync(path.join(dir, 'object-store'))).toEqual(['acct-2']);
    await objects.put('acct-1/a/again', Buffer.from('1'));
    expect(await objects.list('acct-1/')).toEqual(['acct-1/a/again']);
  });

  it('stages an object through a file nobody sees until it is committed, or leaves nothing if discarded', async () => {
    const staged = await objects.stage('acct-1/packs/ab/new.pack');
    writeSync(staged.file.fd, Buffer.alloc(3 * 65536, 1), 0, 3 * 65536, 0);
    expect(await objects.has('acct-1/packs/ab/new.pack')).toBe(false);
    expect(await objects.list('acct-1/')).toEqual([]);
    await staged.drop(65536, 65536); // the middle 64 KiB is not part of it: it reads as zeros
    await staged.commit();
    const object = await objects.get('acct-1/packs/ab/new.pack');
    expect(object?.length).toBe(3 * 65536);
    expect(
      object?.equals(Buffer.concat([Buffer.alloc(65536, 1), Buffer.alloc(65536), Buffer.alloc(65536, 1)])),
    ).toBe(true);

    const given = await objects.stage('acct-1/packs/cd/gone.pack');
    writeSync(given.file.fd, Buffer.from('never seen'));
    await given.discard();
    expect(await objects.list('acct-1/')).toEqual(['acct-1/packs/ab/new.pack']);
    expect(readdirSync(path.join(dir, 'object-store', 'acct-1', 'packs', 'cd'))).toEqual([]);
  });

  it('sets the space of a staged object aside up front when told its length, and frees what it drops', async () => {
    const staged = await objects.stage('acct-1/packs/ab/sized.pack', 4 * 65536);
    const allocated = () => fstatSync(staged.file.fd).blocks * 512;
    expect(fstatSync(staged.file.fd).size).toBe(4 * 65536);
    expect(allocated()).toBeGreaterThanOrEqual(4 * 65536); // before a byte is written
    writeSync(staged.file.fd, Buffer.alloc(65536, 7), 0, 65536, 65536);
    await staged.drop(2 * 65536, 2 * 65536);
    await staged.drop(0, 65536);
    expect(allocated()).toBe(65536);
    await staged.commit();
    expect((await objects.get('acct-1/packs/ab/sized.pack'))?.subarray(65536, 2 * 65536)).toEqual(
      Buffer.alloc(65536, 7),
    );
  });

  it('refuses keys that could escape the root or are not plain segments', async () => {
    for (const bad of ['', '/abs', 'a/../b', '..', 'a//b', 'a/', 'A/b', 'a b', 'a/./b', 'a/b.tmp-12-ab']) {
      await expectFailure(objects.put(bad, Buffer.from('x')), ErrorType.InvalidInput, /object key/);
    }
    await expectFailure(objects.list('../'), ErrorType.InvalidInput);
    expect(assertObjectKey('acct-1/packs/ab/ab12.pack')).toBe('acct-1/packs/ab/ab12.pack');
    expect(existsSync(path.join(dir, 'object-store'))).toBe(false);
  });

  it('hides temp files of interrupted puts and removes those whose writer is gone', async () => {
    await objects.put('acct-1/k', Buffer.from('v'));
    const folder = path.join(dir, 'object-store', 'acct-1');
    // A writer killed mid-put (pid 2^22+1 cannot exist) and one still at work (this process).
    writeFileSync(path.join(folder, 'k2.tmp-4194305-abcd'), Buffer.alloc(100));
    writeFileSync(path.join(folder, `k3.tmp-${process.pid}-abcd`), Buffer.alloc(10));
    expect(await objects.list('acct-1/')).toEqual(['acct-1/k']);
    expect(await objects.removeStaleTemps('acct-1/')).toBe(100);
    expect(readdirSync(folder).sort()).toEqual(['k', `k3.tmp-${process.pid}-abcd`]);
  });

  it('gives concurrent puts of one key distinct temp files: the last rename wins whole', async () => {
    const values = Array.from({ length: 20 }, (_, i) => Buffer.alloc(4096, i));
    const other = new FileObjectStore(objectStoreRoot(dir)); // a second store in the same process
    await Promise.all(values.map((v, i) => (i % 2 ? other : objects).put('acct-1/same', v)));
    const stored = await objects.get('acct-1/same');
    expect(values.some((v) => v.equals(stored!))).toBe(true);
    expect(readdirSync(path.join(dir, 'object-store', 'acct-1'))).toEqual(['same']);
  });
});
