import { setTimeout as sleep } from 'node:timers/promises';
import type { WorkloadConfig } from '../contracts/fleet';
import type { BlockDevice } from './block-device';
import { patternBytes } from './pattern';
import { nowMs, WorkloadLog, writeSeed } from './workload-log';

export interface WorkloadVolume {
  volumeId: string;
  sizeBytes: number;
  /** The workload only reads user-data volumes: their bytes are the customer's. */
  userData: boolean;
}

export interface WorkloadOptions {
  instanceId: string;
  hostId: string;
  dataDir: string;
  config: WorkloadConfig;
  volumes: WorkloadVolume[];
  /** The host's one shared device for a volume (a replica during a sync). */
  device: (volumeId: string) => Promise<BlockDevice>;
  /** Period of the rate loop; each tick issues the writes the rate owes. */
  tickMs?: number;
  /** A write or read failed after the first; the loop retries the same write after a short pause. */
  onError?: (err: unknown) => void;
}

export interface PauseResult {
  lastSeq: number;
  /** When the last write completed (epoch ms), or null if none did since the workload (re)started. */
  lastWriteAtMs: number | null;
  pausedAtMs: number;
}

export interface ResumeResult {
  resumedAtMs: number;
  /** When the first write after resuming completed; null when the workload is idle (rate 0). */
  firstWriteAtMs: number | null;
}

export type WorkloadState = 'paused' | 'running' | 'stopped';

interface PendingWrite {
  seq: number;
  volumeId: string;
  offset: number;
}

const RETRY_DELAY_MS = 100;
/** One read after every this many writes. */
const READ_EVERY = 16;
/** A stalled disk must not turn into a burst afterwards: the rate forgets debt older than this. */
const MAX_BACKLOG_MS = 100;

/**
 * The synthetic load of one running instance: writes of `writeSize` bytes at random aligned offsets
 * of its non-user-data volumes at `writeBytesPerSec`, each logged with a sequence number that
 * continues across hosts, plus an occasional read.
 */
export class Workload {
  readonly instanceId: string;
  private readonly opts: WorkloadOptions;
  private readonly log: WorkloadLog;
  private volumes: WorkloadVolume[];
  private state_: WorkloadState = 'paused';
  /** Bumped on every pause/resume so a loop from an earlier run exits instead of writing on. */
  private generation = 0;
  private inFlight: Promise<unknown> = Promise.resolve();
  private lastSeq_: number;
  private lastWriteAtMs: number | null = null;
  private pending: PendingWrite | undefined;
  private writesSinceRead = 0;

  constructor(opts: WorkloadOptions, lastSeq = 0) {
    this.opts = opts;
    this.instanceId = opts.instanceId;
    this.volumes = opts.volumes;
    this.lastSeq_ = lastSeq;
    this.log = new WorkloadLog(opts.dataDir, opts.instanceId);
  }

  get state(): WorkloadState {
    return this.state_;
  }

  get lastSeq(): number {
    return this.lastSeq_;
  }

  /** Volumes can change while running (an import attaches one). */
  setVolumes(volumes: WorkloadVolume[]): void {
    this.volumes = volumes;
  }

  private writable(): WorkloadVolume[] {
    return this.volumes.filter((v) => !v.userData && v.sizeBytes >= this.opts.config.writeSize);
  }

  private idle(): boolean {
    return this.opts.config.writeBytesPerSec <= 0 || this.writable().length === 0;
  }

  /**
   * Starts writing at seq `fromSeq`, the first write right away. Resolves once that first write is
   * done (so the caller knows the instance really runs here), and rejects, leaving the workload
   * paused, if it fails.
   */
  async resume(fromSeq: number): Promise<ResumeResult> {
    if (this.state_ === 'stopped') throw new Error(`workload of ${this.instanceId} is stopped`);
    if (this.state_ === 'running') return { resumedAtMs: nowMs(), firstWriteAtMs: this.lastWriteAtMs };
    await this.settle();
    this.lastSeq_ = fromSeq - 1;
    this.lastWriteAtMs = null;
    this.pending = undefined;
    const generation = ++this.generation;
    this.state_ = 'running';
    const resumedAtMs = nowMs();
    if (this.idle()) return { resumedAtMs, firstWriteAtMs: null };
    try {
      await this.track(this.writeNext());
    } catch (err) {
      if (this.generation === generation) {
        this.state_ = 'paused';
        this.generation++;
      }
      throw err;
    }
    const firstWriteAtMs = this.lastWriteAtMs;
    if (this.generation === generation) this.loop(generation);
    return { resumedAtMs, firstWriteAtMs };
  }

  /** Stops issuing writes and waits for the one in flight. Pausing a paused workload changes nothing. */
  async pause(): Promise<PauseResult> {
    if (this.state_ === 'running') {
      this.state_ = 'paused';
      this.generation++;
    }
    const pausedAtMs = nowMs();
    await this.settle();
    return { lastSeq: this.lastSeq_, lastWriteAtMs: this.lastWriteAtMs, pausedAtMs };
  }

  async stop(): Promise<PauseResult> {
    const result = await this.pause();
    this.state_ = 'stopped';
    this.log.close();
    return result;
  }

  private async settle(): Promise<void> {
    await this.inFlight.catch(() => undefined);
  }

  private track<T>(op: Promise<T>): Promise<T> {
    this.inFlight = op;
    return op;
  }

  private loop(generation: number): void {
    // Not awaited on purpose: the loop runs until a pause or stop bumps the generation.
    void this.run(generation).catch((err) => this.opts.onError?.(err));
  }

  private async run(generation: number): Promise<void> {
    const { writeBytesPerSec, writeSize } = this.opts.config;
    const tickMs = this.opts.tickMs ?? 5;
    const writesPerMs = writeBytesPerSec / writeSize / 1000;
    const maxBacklog = Math.max(1, Math.ceil(writesPerMs * MAX_BACKLOG_MS));
    const live = () => this.generation === generation && this.state_ === 'running';
    let start = nowMs();
    let issued = 1; // resume() made the first write at `start`
    while (live()) {
      // Until the next write is due rather than every tick: a wake-up from idle costs this VM
      // 0.2-0.4 ms of CPU, and at 64 writes/s ticking took the simulated guest from about 85 to 105
      // ms of CPU a second. At most a backlog apart, so a paused or stopped loop still ends soon.
      const due = start + issued / writesPerMs - nowMs();
      await sleep(Math.min(MAX_BACKLOG_MS, Math.max(tickMs, due)));
      if (!live() || this.idle()) continue;
      let owed = Math.floor((nowMs() - start) * writesPerMs) + 1 - issued;
      if (owed > maxBacklog) {
        issued += owed - maxBacklog;
        owed = maxBacklog;
      }
      for (let i = 0; i < owed && live(); i++) {
        try {
          await this.track(this.writeNext());
          issued++;
          if (++this.writesSinceRead >= READ_EVERY) {
            this.writesSinceRead = 0;
            await this.track(this.readRandom());
          }
        } catch (err) {
          this.opts.onError?.(err);
          await sleep(RETRY_DELAY_MS);
          // Restart the rate clock so the time lost to the failure is not paid back as a burst.
          start = nowMs();
          issued = 0;
          break;
        }
      }
    }
  }

  private pick(volumes: WorkloadVolume[]): { volume: WorkloadVolume; offset: number } {
    const writeSize = this.opts.config.writeSize;
    const volume = volumes[Math.floor(Math.random() * volumes.length)];
    const slots = Math.floor(volume.sizeBytes / writeSize);
    return { volume, offset: Math.floor(Math.random() * slots) * writeSize };
  }

  private async writeNext(): Promise<void> {
    const writeSize = this.opts.config.writeSize;
    // A failed write is retried as is: same seq, same place, so a partly applied one is completed.
    if (!this.pending) {
      const { volume, offset } = this.pick(this.writable());
      this.pending = { seq: this.lastSeq_ + 1, volumeId: volume.volumeId, offset };
    }
    const { seq, volumeId, offset } = this.pending;
    const device = await this.opts.device(volumeId);
    await device.write(offset, patternBytes(writeSeed(this.instanceId, seq), writeSize));
    const t = nowMs();
    this.log.append({ seq, t, host: this.opts.hostId, volume: volumeId, offset, length: writeSize });
    this.pending = undefined;
    this.lastSeq_ = seq;
    this.lastWriteAtMs = t;
  }

  private async readRandom(): Promise<void> {
    const readable = this.volumes.filter((v) => v.sizeBytes >= this.opts.config.writeSize);
    if (readable.length === 0) return;
    const { volume, offset } = this.pick(readable);
    const device = await this.opts.device(volume.volumeId);
    await device.read(offset, this.opts.config.writeSize);
  }
}
