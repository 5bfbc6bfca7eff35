import * as fs from 'fs';
import * as path from 'path';
import { performance } from 'perf_hooks';
import { assertId } from '../contracts/ids';
import { isNoEnt } from './atomic-file';
import { fillPattern } from './pattern';

/** One write the synthetic workload completed; its bytes are patternBytes(`w:${instanceId}:${seq}`, length). */
export interface WorkloadLogEntry {
  seq: number;
  /** Epoch ms (sub-ms precision) when the write completed. */
  t: number;
  host: string;
  volume: string;
  offset: number;
  length: number;
}

/** Wall clock with sub-millisecond precision, so switch gaps of a few ms are measurable. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export function workloadLogDir(dataDir: string): string {
  return path.join(dataDir, 'workload-logs');
}

export function workloadLogPath(dataDir: string, instanceId: string): string {
  return path.join(workloadLogDir(dataDir), `${assertId('instanceId', instanceId)}.jsonl`);
}

/** Seed of the bytes written by write `seq`, so a checker can regenerate them from the log. */
export function writeSeed(instanceId: string, seq: number): string {
  return `w:${instanceId}:${seq}`;
}

/**
 * Appender for one instance's log. The file is shared by every host the instance ever ran on (one at
 * a time), so it is opened in append mode: each line lands whole at the end whichever host writes it.
 */
export class WorkloadLog {
  readonly path: string;
  private fd: number | undefined;

  constructor(dataDir: string, instanceId: string) {
    this.path = workloadLogPath(dataDir, instanceId);
  }

  append(entry: WorkloadLogEntry): void {
    if (this.fd === undefined) {
      fs.mkdirSync(path.dirname(this.path), { recursive: true });
      this.fd = fs.openSync(this.path, 'a+');
      // A writer killed mid-line left a torn tail: end it, or the next entry would be glued to it.
      const size = fs.fstatSync(this.fd).size;
      const last = Buffer.alloc(1);
      if (size > 0 && fs.readSync(this.fd, last, 0, 1, size - 1) === 1 && last[0] !== 0x0a) {
        fs.writeSync(this.fd, '\n');
      }
    }
    fs.writeSync(this.fd, JSON.stringify(entry) + '\n');
  }

  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

function parseLines(text: string): WorkloadLogEntry[] {
  const entries: WorkloadLogEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      entries.push(JSON.parse(line) as WorkloadLogEntry);
    } catch {
      // A process killed mid-append leaves a torn last line: that write is not on record.
    }
  }
  return entries;
}

/** Every logged write of the instance, in file order (which is seq order). Empty if it never wrote. */
export function readWorkloadLog(dataDir: string, instanceId: string): WorkloadLogEntry[] {
  const file = workloadLogPath(dataDir, instanceId);
  if (!fs.existsSync(file)) return [];
  return parseLines(fs.readFileSync(file, 'utf8'));
}

/** Highest seq in the log (0 if none), reading only the file's tail so it stays cheap on the switch path. */
export function lastLoggedSeq(dataDir: string, instanceId: string): number {
  const file = workloadLogPath(dataDir, instanceId);
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    if (isNoEnt(err)) return 0;
    throw err;
  }
  try {
    const size = fs.fstatSync(fd).size;
    const length = Math.min(size, 16 * 1024);
    const buf = Buffer.alloc(length);
    fs.readSync(fd, buf, 0, length, size - length);
    const text = buf.toString('utf8');
    // The first line of the tail may be cut: drop it unless the tail is the whole file.
    const body = length < size ? text.slice(text.indexOf('\n') + 1) : text;
    let last = 0;
    for (const entry of parseLines(body)) last = Math.max(last, entry.seq);
    return last;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Applies every logged write to `volumeId` onto `image` (its content before the writes), in seq
 * order: what the volume must hold afterwards, wherever the instance ran. For checkers and tests.
 */
export function overlayLoggedWrites(
  image: Buffer,
  instanceId: string,
  volumeId: string,
  log: WorkloadLogEntry[],
): Buffer {
  const writes = log.filter((e) => e.volume === volumeId).sort((a, b) => a.seq - b.seq);
  for (const e of writes)
    fillPattern(writeSeed(instanceId, e.seq), image.subarray(e.offset, e.offset + e.length));
  return image;
}
