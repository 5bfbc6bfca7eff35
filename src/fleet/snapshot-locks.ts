import { randomBytes } from 'node:crypto';
import * as os from 'node:os';
import { processAlive } from './atomic-file';
import type { ObjectStore } from './object-store';

/**
 * Keeps garbage collection and uploads of one account apart, across processes, with nothing but
 * puts, deletes and listings (as restic does): an open upload may dedupe against any stored chunk,
 * so GC must not delete chunks while one is open.
 *
 * Each side first puts its own lock object, then lists the account's locks:
 * - an upload that sees a GC lock keeps its own lock and waits for the GC lock to go;
 * - a GC that sees any other lock removes its own and skips this round.
 * Whatever the interleaving, at least one of the two sees the other's lock, so a GC never runs
 * while an upload is open. A lock whose holder stopped refreshing it (killed process) is stale
 * after `staleMs`, at once if its holder was a process on this machine that no longer exists.
 */

export interface LockOptions {
  /** A lock not refreshed for this long is abandoned (default 10 min). */
  staleMs: number;
  /** How long an upload waits for a running GC before failing (retryably). */
  waitForGcMs: number;
  pollMs: number;
}

interface LockBody {
  kind: 'upload' | 'gc';
  pid: number;
  hostname: string;
  refreshedAt: number;
}

export interface LockView {
  key: string;
  kind: 'upload' | 'gc';
  /** The snapshot an upload lock belongs to. */
  snapshotId?: string;
  stale: boolean;
}

const LOCK_NAME = /\/locks\/(upload-([a-z0-9-]+)|gc-[0-9a-f]+)\.json$/;

export function uploadLockKey(account: string, snapshotId: string): string {
  return `${account}/locks/upload-${snapshotId}.json`;
}

export class SnapshotLocks {
  constructor(
    private readonly objects: ObjectStore,
    private readonly options: LockOptions,
  ) {}

  private body(kind: LockBody['kind']): Buffer {
    const body: LockBody = { kind, pid: process.pid, hostname: os.hostname(), refreshedAt: Date.now() };
    return Buffer.from(JSON.stringify(body));
  }

  /** The account's locks, each marked stale or not. */
  async list(account: string): Promise<LockView[]> {
    const views: LockView[] = [];
    for (const key of await this.objects.list(`${account}/locks/`)) {
      const m = LOCK_NAME.exec(key);
      if (!m) continue;
      const raw = await this.objects.get(key);
      if (!raw) continue; // released meanwhile
      let stale = true;
      try {
        stale = this.isStale(JSON.parse(raw.toString('utf8')) as LockBody);
      } catch {
        // unreadable: treat as abandoned
      }
      views.push({ key, kind: m[2] ? 'upload' : 'gc', snapshotId: m[2], stale });
    }
    return views;
  }

  private isStale(body: LockBody): boolean {
    if (body.hostname === os.hostname() && !processAlive(body.pid)) return true;
    return Date.now() - body.refreshedAt > this.options.staleMs;
  }

  /**
   * Takes (or retakes, after a crash) the upload lock of a snapshot, waiting while a GC of the
   * account runs. Throws a retryable Error if the GC outlasts waitForGcMs.
   */
  async acquireUpload(account: string, snapshotId: string): Promise<void> {
    const key = uploadLockKey(account, snapshotId);
    await this.objects.put(key, this.body('upload'));
    const deadline = Date.now() + this.options.waitForGcMs;
    for (;;) {
      const gcRunning = (await this.list(account)).some((l) => l.kind === 'gc' && !l.stale);
      if (!gcRunning) return;
      if (Date.now() >= deadline) {
        await this.objects.delete(key);
        throw new Error(
          `garbage collection of account ${account}'s snapshots has run for over ${this.options.waitForGcMs} ms; retry the upload later`,
        );
      }
      await new Promise((r) => setTimeout(r, this.options.pollMs));
    }
  }

  async refreshUpload(account: string, snapshotId: string): Promise<void> {
    await this.objects.put(uploadLockKey(account, snapshotId), this.body('upload'));
  }

  async releaseUpload(account: string, snapshotId: string): Promise<void> {
    await this.objects.delete(uploadLockKey(account, snapshotId));
  }

  /**
   * Takes the account's GC lock if no other lock is live. Returns the lock key and the stale
   * upload locks (abandoned uploads the GC may clean up), or the reason it could not.
   */
  async acquireGc(account: string): Promise<{ key: string; abandoned: LockView[] } | { busy: string }> {
    const key = `${account}/locks/gc-${randomBytes(8).toString('hex')}.json`;
    await this.objects.put(key, this.body('gc'));
    const others = (await this.list(account)).filter((l) => l.key !== key);
    const live = others.find((l) => !l.stale);
    if (live) {
      await this.objects.delete(key);
      const what =
        live.kind === 'upload' ? `an upload of snapshot ${live.snapshotId} is open` : 'another GC is running';
      return { busy: `${what} for account ${account}` };
    }
    for (const l of others) if (l.kind === 'gc') await this.objects.delete(l.key);
    return { key, abandoned: others.filter((l) => l.kind === 'upload') };
  }

  async releaseGc(key: string): Promise<void> {
    await this.objects.delete(key);
  }
}
