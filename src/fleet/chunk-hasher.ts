import { blake3 } from '@napi-rs/blake-hash';
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import { assertSameFile, readFileRange, type FileRange, type FileRef } from './file-range';

/** Bytes of one chunk hash (BLAKE3, 256 bits). */
export const HASH_BYTES = 32;

/** Below this, hashing on the calling thread is cheaper than a round trip to a worker. */
const INLINE_BYTES = 1024 * 1024;
/**
 * Work is handed to workers in pieces of at most this size, so two callers' batches interleave.
 * Each piece costs a message each way on the calling thread (and, for a file, a mapping): 8 MiB
 * pieces showed up as ~10% of its time per GiB; 32 MiB ones left a worker idle per 32 MiB batch.
 */
const TASK_BYTES = 16 * 1024 * 1024;

// Plain JavaScript evaluated in the worker, so it runs the same under ts-node, ts-jest and tsc output.
const WORKER_SOURCE = `
const fs = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const { blake3 } = require(workerData.blake);
// mmap through the FFI: hashing the page cache in place spares a copy of every byte into a buffer,
// which costs about as much CPU as the hashing itself. A worker maps a window of the file and keeps
// it while tasks inside it keep coming: mapping and unmapping each 16 MiB task cost 10-25% more CPU
// per GiB, measured on one thread. A mapping keeps its file's pages even after the file is deleted,
// so it goes after a moment without tasks.
// Windows are mapped over one address range the worker reserves for good, seen through one Buffer
// made once: V8 counts a view as 1 GiB of new memory and collected garbage for 20-40 ms of CPU per
// worker each time one was made (every snapshot). 1 GiB, because a Buffer cannot be longer than
// 4 GiB and the FFI aborts the whole process when asked for a longer view.
const IDLE_UNMAP_MS = 500;
const WINDOW_BYTES = 1024 * 1024 * 1024;
const WINDOW_ALIGN = 2 * 1024 * 1024; // a multiple of any page size
const PROT_NONE = 0, PROT_READ = 1;
const MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
let map = null;
try {
  const koffi = require(workerData.koffi);
  const libc = koffi.load('libc.so.6');
  const mmap = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
  const failed = (address) => address === null || koffi.address(address) === 0xffffffffffffffffn;
  // Address space only: no memory behind it, and touching it faults until a window is mapped there.
  const reserve = () => mmap(base, WINDOW_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | (base ? MAP_FIXED : 0), -1, 0);
  let base = null;
  base = reserve();
  if (failed(base)) throw new Error('no address space for a window');
  const view = Buffer.from(koffi.view(base, WINDOW_BYTES));
  let held = null; // { key, start, length }: the file's bytes [start, start + length) are at view[0..length)
  let idle = null;
  const drop = () => {
    // Mapping the reservation over the window unmaps the file (and keeps the address range ours).
    if (held && failed(reserve())) map = null;
    held = null;
  };
  // The file's bytes [position, position + length), or null when they cannot be mapped.
  map = (fd, key, size, position, length) => {
    clearTimeout(idle);
    idle = setTimeout(drop, IDLE_UNMAP_MS);
    if (size < position + length) return null; // past the end of the file now: touching it would fault
    const inHeld =
      held && held.key === key && held.start <= position && position + length <= held.start + held.length;
    if (!inHeld) {
      drop();
      if (!map) return null;
      const start = position - (position % WINDOW_ALIGN);
      const windowLength = Math.min(size - start, WINDOW_BYTES);
      if (position + length > start + windowLength) return null; // a task longer than a window: read it
      // PROT_READ, MAP_SHARED: pages fault in as they are hashed.
      if (failed(mmap(base, windowLength, PROT_READ, MAP_SHARED | MAP_FIXED, fd, start))) {
        // The range may not be ours any more: never map over it again, read instead.
        map = null;
        return null;
      }
      held = { key, start, length: windowLength };
    }
    return view.subarray(position - held.start, position - held.start + length);
  };
} catch {}
// Writes the hash of chunk i of data into out at hash slot i.
function hashChunk(data, i, chunkSize, out) {
  blake3(data.subarray(i * chunkSize, Math.min(data.length, (i + 1) * chunkSize))).copy(out, 32 * i);
}
function hashAll(data, chunkSize) {
  const n = Math.ceil(data.length / chunkSize);
  const out = Buffer.allocUnsafeSlow(32 * n);
  for (let i = 0; i < n; i++) hashChunk(data, i, chunkSize, out);
  return out;
}
// Chunks are written a few at a time, while their bytes are still in the CPU's cache from hashing:
// 256 KiB writes measured fastest; 1 MiB ones fill large page-cache folios slowly when memory is
// fragmented, and made a cold run twice as slow.
const WRITE_BYTES = 256 * 1024;
// The hashes, then a byte per chunk: 1 if it was written to 'to' at its offset in the data, 0 if it
// repeats a chunk earlier in the data (a block of zeros, say), which is not written again.
function storeAll(data, chunkSize, to) {
  const n = Math.ceil(data.length / chunkSize);
  const out = Buffer.allocUnsafeSlow(33 * n);
  const seen = new Set();
  let run = -1;
  const flush = (end) => {
    if (run < 0) return;
    const from = run * chunkSize;
    const until = Math.min(data.length, end * chunkSize);
    for (let done = from; done < until; ) done += fs.writeSync(to.fd, data, done, until - done, to.position + done);
    run = -1;
  };
  for (let i = 0; i < n; i++) {
    hashChunk(data, i, chunkSize, out);
    const hash = out.toString('latin1', 32 * i, 32 * (i + 1));
    const repeat = seen.has(hash);
    seen.add(hash);
    out[32 * n + i] = repeat ? 0 : 1;
    if (repeat) {
      flush(i);
      continue;
    }
    if (run < 0) run = i;
    if ((i + 1 - run) * chunkSize >= WRITE_BYTES) flush(i + 1);
  }
  flush(n);
  return out;
}
// The descriptor is the process's, and numbers are reused: check it still names the lent file.
function checkSameFile(ref) {
  const st = fs.fstatSync(ref.fd);
  if (st.dev !== ref.dev || st.ino !== ref.ino) {
    throw new Error('file descriptor ' + ref.fd + ' no longer names the file it was lent for');
  }
  return st;
}
function hashFile(file, length, chunkSize) {
  const st = checkSameFile(file);
  if (file.to) checkSameFile(file.to);
  const done = (data) => (file.to ? storeAll(data, chunkSize, file.to) : hashAll(data, chunkSize));
  // Keyed by descriptor too: a mapping made through a descriptor since closed is not reused. While a
  // window is held its file keeps its inode, so no file created meanwhile can have the same key.
  const mapped = map && map(file.fd, file.fd + ':' + st.dev + ':' + st.ino, st.size, file.position, length);
  if (mapped) return done(mapped);
  const data = Buffer.allocUnsafe(length);
  for (let got = 0; got < length; ) {
    const n = fs.readSync(file.fd, data, got, length - got, file.position + got);
    if (n === 0) throw new Error('file ended at byte ' + (file.position + got) + ', inside a lent range');
    got += n;
  }
  return done(data);
}
parentPort.on('message', ({ id, sab, offset, length, chunkSize, file }) => {
  try {
    const out = file ? hashFile(file, length, chunkSize) : hashAll(Buffer.from(sab, offset, length), chunkSize);
    parentPort.postMessage({ id, out }, [out.buffer]);
  } catch (err) {
    parentPort.postMessage({ id, error: String(err && err.stack || err) });
  }
});
`;

interface Task {
  id: number;
  sab?: SharedArrayBuffer;
  offset: number;
  /** With `to`, each chunk is also written there (see storeFileChunks). */
  file?: FileRef & { position: number; to?: FileRef & { position: number } };
  length: number;
  chunkSize: number;
  resolve: (hashes: Buffer) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  task?: Task;
}

/** The name (hex) a chunk is stored under. */
export function chunkHash(data: Buffer): string {
  return blake3(data).toString('hex');
}

export function chunkHashes(data: Buffer, chunkSize: number): Buffer {
  const n = Math.ceil(data.length / chunkSize);
  const out = Buffer.allocUnsafe(HASH_BYTES * n);
  for (let i = 0; i < n; i++) {
    const chunk = data.subarray(i * chunkSize, Math.min(data.length, (i + 1) * chunkSize));
    blake3(chunk).copy(out, HASH_BYTES * i);
  }
  return out;
}

/**
 * BLAKE3 of every chunk of a buffer, on worker threads. BLAKE3 rather than sha256: collision
 * resistant all the same (chunks are named by it), and about 2.8 GB/s per core here against
 * sha256's 1.3 (with SHA-NI), which makes it the difference between a snapshot keeping up with a
 * disk copy or not. Still on workers: the calling thread must stay free to drive the reads and
 * writes.
 * Buffers from sharedBuffer() reach the workers without a copy; others are copied once.
 * Idle workers do not keep the process alive; close() stops them.
 */
export class ChunkHasher {
  private readonly slots: Slot[] = [];
  private readonly queue: Task[] = [];
  private nextId = 0;
  private closed = false;

  constructor(private readonly workerCount = defaultWorkerCount()) {}

  /**
   * Starts the workers now rather than on the first call, which otherwise waits about 50 ms for
   * them (an operator's first snapshot). Idle, they keep nothing alive.
   */
  start(): void {
    if (this.closed) return;
    while (this.slots.length < this.workerCount) this.spawn();
  }

  /** A Buffer over shared memory: fill it and pass it to hashChunks to spare a copy. */
  static sharedBuffer(size: number): Buffer {
    return Buffer.from(new SharedArrayBuffer(size));
  }

  /** HASH_BYTES per chunk, in order; the last chunk may be shorter than chunkSize. */
  async hashChunks(data: Buffer, chunkSize: number): Promise<Buffer> {
    if (this.closed) throw new Error('chunk hasher is closed');
    if (data.length <= INLINE_BYTES || this.workerCount < 1) return chunkHashes(data, chunkSize);
    let shared = data;
    if (!(data.buffer instanceof SharedArrayBuffer)) {
      shared = ChunkHasher.sharedBuffer(data.length);
      data.copy(shared);
    }
    const sab = shared.buffer as SharedArrayBuffer;
    return Buffer.concat(
      await this.run(shared.length, chunkSize, (start) => ({ sab, offset: shared.byteOffset + start })),
    );
  }

  /**
   * As hashChunks, for bytes in place in a file: the workers map its pages rather than being sent a
   * copy. The owner keeps the range unchanged, and the file open, until this resolves.
   */
  async hashFileChunks(range: FileRange, chunkSize: number): Promise<Buffer> {
    if (this.closed) throw new Error('chunk hasher is closed');
    if (range.length <= INLINE_BYTES || this.workerCount < 1) {
      assertSameFile(range); // as the workers do: the descriptor may name another file by now
      return chunkHashes(await readFileRange(range), chunkSize);
    }
    const { fd, dev, ino } = range;
    return Buffer.concat(
      await this.run(range.length, chunkSize, (start) => ({
        offset: 0,
        file: { fd, dev, ino, position: range.position + start },
      })),
    );
  }

  /** Whether storeFileChunks takes a range this long (it needs the workers, and a range worth them). */
  storesInPlace(length: number): boolean {
    return length > INLINE_BYTES && this.workerCount > 0 && !this.closed;
  }

  /**
   * As hashFileChunks, and writes each chunk into `to` at its offset in the range as it goes, while
   * its bytes are still in the CPU's cache: a second pass over memory saved, against storing after
   * hashing. A chunk repeating an earlier one of the same task is not written: `written` has a byte
   * per chunk, 1 if it was. The owner keeps both files open until this resolves.
   */
  async storeFileChunks(
    range: FileRange,
    chunkSize: number,
    to: FileRef,
  ): Promise<{ hashes: Buffer; written: Buffer }> {
    if (this.closed) throw new Error('chunk hasher is closed');
    if (!this.storesInPlace(range.length)) {
      throw new Error(`storeFileChunks takes ranges of over ${INLINE_BYTES} bytes, with workers`);
    }
    const { fd, dev, ino } = range;
    const parts = await this.run(range.length, chunkSize, (start) => ({
      offset: 0,
      file: { fd, dev, ino, position: range.position + start, to: { ...to, position: start } },
    }));
    const split = parts.map((p) => p.length / (HASH_BYTES + 1));
    return {
      hashes: Buffer.concat(parts.map((p, i) => p.subarray(0, HASH_BYTES * split[i]))),
      written: Buffer.concat(parts.map((p, i) => p.subarray(HASH_BYTES * split[i]))),
    };
  }

  /** Queues `total` bytes as tasks of whole chunks and gathers their results in order. */
  private async run(
    total: number,
    chunkSize: number,
    where: (start: number) => Pick<Task, 'sab' | 'offset' | 'file'>,
  ): Promise<Buffer[]> {
    const step = Math.max(chunkSize, Math.floor(TASK_BYTES / chunkSize) * chunkSize);
    const parts: Promise<Buffer>[] = [];
    for (let start = 0; start < total; start += step) {
      const length = Math.min(step, total - start);
      parts.push(
        new Promise<Buffer>((resolve, reject) => {
          this.queue.push({ id: this.nextId++, ...where(start), length, chunkSize, resolve, reject });
        }),
      );
    }
    this.dispatch();
    return Promise.all(parts);
  }

  async close(): Promise<void> {
    this.closed = true;
    const slots = this.slots.splice(0);
    for (const task of this.queue.splice(0)) task.reject(new Error('chunk hasher closed'));
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  private dispatch(): void {
    while (this.slots.length < this.workerCount && this.slots.length < this.queue.length) this.spawn();
    for (const slot of this.slots) {
      if (slot.task || this.queue.length === 0) continue;
      const task = this.takeTask();
      slot.task = task;
      slot.worker.ref(); // a caller awaits this result: keep the process alive until it arrives
      const { id, sab, offset, length, chunkSize, file } = task;
      slot.worker.postMessage({ id, sab, offset, length, chunkSize, file });
    }
  }

  /**
   * The first queued task that writes into no file another worker is writing, or else the first.
   * Buffered writes to one file take turns on its inode's lock: two workers storing into one pack
   * spun waiting for each other, for about a seventh of their time when fresh memory was slow.
   */
  private takeTask(): Task {
    const writing = new Set(this.slots.flatMap((s) => (s.task?.file?.to ? [s.task.file.to.fd] : [])));
    const at = this.queue.findIndex((t) => !t.file?.to || !writing.has(t.file.to.fd));
    return this.queue.splice(Math.max(0, at), 1)[0];
  }

  private spawn(): void {
    const slot: Slot = {
      worker: new Worker(WORKER_SOURCE, {
        eval: true,
        // An eval'd worker resolves modules from the working directory: give it the path.
        workerData: { blake: require.resolve('@napi-rs/blake-hash'), koffi: require.resolve('koffi') },
      }),
    };
    slot.worker.unref();
    slot.worker.on('message', (msg: { id: number; out?: Uint8Array; error?: string }) => {
      const task = slot.task;
      slot.task = undefined;
      slot.worker.unref();
      if (task && task.id === msg.id) {
        if (msg.out) task.resolve(Buffer.from(msg.out.buffer, msg.out.byteOffset, msg.out.byteLength));
        else task.reject(new Error(`chunk hashing failed: ${msg.error}`));
      }
      this.dispatch();
    });
    slot.worker.on('error', (err) => this.fail(slot, err));
    slot.worker.on('exit', (code) => {
      if (!this.closed) this.fail(slot, new Error(`chunk hashing worker exited with code ${code}`));
    });
    this.slots.push(slot);
  }

  /** A dead worker fails its task (the caller may retry) and is replaced on the next dispatch. */
  private fail(slot: Slot, err: Error): void {
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
    const task = slot.task;
    slot.task = undefined;
    task?.reject(err);
    if (!this.closed) this.dispatch();
  }
}

function defaultWorkerCount(): number {
  return Math.max(1, Math.min(4, os.availableParallelism()));
}
