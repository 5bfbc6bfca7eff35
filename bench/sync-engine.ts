/**
 * Micro-benchmark of the post-sync engine: background copy of a volume (workload idle) through the
 * in-process block source, compared with `cp` of the same image on the same disk (warm cache).
 * Usage: ts-node --transpile-only bench/sync-engine.ts [sizeMiB=512] [runs=5] [dir=os.tmpdir()]
 * Runs alternate (cp, sync), each after `sync` so earlier dirty pages do not slow the next; the first
 * pair is a discarded warm-up; medians are reported.
 * Last line: {"sizeMiB":…, "syncMBps":…, "cpMBps":…, "syncVsCp":…}
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MiB } from '../src/contracts';
import { localBlockSource } from '../src/fleet/block-source';
import { HostStore } from '../src/fleet/host-store';
import { ReplicaVolume } from '../src/fleet/replica';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const sizeMiB = Number(process.argv[2] ?? 512);
  const runs = Number(process.argv[3] ?? 5);
  const dir = mkdtempSync(path.join(process.argv[4] ?? os.tmpdir(), 'rehome-bench-sync-'));
  const meta = {
    volumeId: 'v-bench',
    instanceId: 'i-bench',
    sizeBytes: sizeMiB * MiB,
    blockSize: 64 * 1024,
    userData: false,
  };
  const src = new HostStore(dir, 'h-src');
  const dst = new HostStore(dir, 'h-dst');
  try {
    await src.createVolume(meta, 'pattern');
    readFileSync(src.imagePath(meta.volumeId)); // warm the page cache
    const source = localBlockSource(src);
    const cpPath = path.join(dir, 'cp.img');
    const syncRates: number[] = [];
    const cpRates: number[] = [];
    for (let r = -1; r < runs; r++) {
      rmSync(cpPath, { force: true });
      spawnSync('sync');
      let t = process.hrtime.bigint();
      const cp = spawnSync('cp', [src.imagePath(meta.volumeId), cpPath]);
      if (cp.status !== 0) throw new Error(`cp failed: ${cp.stderr}`);
      const cpRate = sizeMiB / (Number(process.hrtime.bigint() - t) / 1e9);
      rmSync(cpPath, { force: true });

      await dst.deleteVolume(meta.volumeId);
      await ReplicaVolume.create(dst, meta);
      const replica = await ReplicaVolume.open(dst, meta.volumeId, source);
      spawnSync('sync');
      t = process.hrtime.bigint();
      const p = await replica.copy();
      const secs = Number(process.hrtime.bigint() - t) / 1e9;
      if (!p.done) throw new Error('copy did not finish');
      const syncRate = sizeMiB / secs;
      await replica.finalize();
      await replica.close();
      if (r < 0) continue; // warm-up
      cpRates.push(cpRate);
      syncRates.push(syncRate);
      console.log(`run ${r + 1}: cp ${cpRate.toFixed(0)} MiB/s, sync ${syncRate.toFixed(0)} MiB/s`);
    }
    const same = spawnSync('cmp', [src.imagePath(meta.volumeId), dst.imagePath(meta.volumeId)]);
    if (same.status !== 0) throw new Error('target image differs from the source');
    await source.close();
    const syncMBps = median(syncRates) * (MiB / 1e6);
    const cpMBps = median(cpRates) * (MiB / 1e6);
    console.log(
      JSON.stringify({
        sizeMiB,
        syncMBps: Math.round(syncMBps),
        cpMBps: Math.round(cpMBps),
        syncVsCp: Number((syncMBps / cpMBps).toFixed(2)),
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
