/**
 * Exclusive locks on inclusive block ranges, served in order; a later waiter may pass an earlier one
 * only if their ranges do not overlap. The post-sync replica holds one while a block leaves Missing
 * (so a copy of stale source data never lands on a block the workload wrote), and a point-in-time
 * capture holds one while it reads or preserves blocks (so a read never sees bytes written after
 * its instant).
 */
export class RangeLock {
  private readonly held: { lo: number; hi: number }[] = [];
  private readonly waiting: { lo: number; hi: number; grant: () => void }[] = [];

  /** The lock if it is free now (and nobody waits for an overlapping range), else undefined. */
  tryAcquire(lo: number, hi: number): (() => void) | undefined {
    if (!this.free(lo, hi, this.waiting.length)) return undefined;
    const entry = { lo, hi };
    this.held.push(entry);
    return () => this.release(entry);
  }

  acquire(lo: number, hi: number): Promise<() => void> {
    return new Promise((resolve) => {
      const entry = { lo, hi, grant: () => resolve(() => this.release(entry)) };
      if (this.free(lo, hi, this.waiting.length)) {
        this.held.push(entry);
        entry.grant();
      } else {
        this.waiting.push(entry);
      }
    });
  }

  private release(entry: { lo: number; hi: number }): void {
    const at = this.held.indexOf(entry);
    if (at < 0) return; // released already
    this.held.splice(at, 1);
    for (let w = 0; w < this.waiting.length;) {
      const next = this.waiting[w];
      if (this.free(next.lo, next.hi, w)) {
        this.waiting.splice(w, 1);
        this.held.push(next);
        next.grant();
      } else {
        w++;
      }
    }
  }

  /** No overlap with a held range nor with the first `waitersAhead` waiters. */
  private free(lo: number, hi: number, waitersAhead: number): boolean {
    const overlaps = (r: { lo: number; hi: number }) => r.lo <= hi && lo <= r.hi;
    return !this.held.some(overlaps) && !this.waiting.slice(0, waitersAhead).some(overlaps);
  }
}
