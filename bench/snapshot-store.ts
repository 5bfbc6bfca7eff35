/**
 * Micro-benchmark of the snapshot store: a full snapshot of a volume image read from a file, vs
 * `cp` of the same image on the same disk (warm cache), then an incremental snapshot after 1% of
 * the 64 KiB blocks changed.
 * Usage: ts-node --transpile-only bench/snapshot-store.ts [sizeMiB=1024] [runs=3] [dir=os.tmpdir()]
 * Runs alternate (cp, snapshot), each after `sync` so earlier dirty pages do not slow the next; the
 * first pair is a discarded warm-up; medians are reported.
 * Last line: {"fullMBps":…, "cpMBps":…, "fullVsCp":…, "incrementalBytesRatio":…}
 */
import { spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, openSync, closeSync, writeSync, rmSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { MiB, type SnapshotUploadMeta } from '../src/contracts';
import { FileObjectStore } from '../src/fleet/object-store';
import { fillPattern } from '../src/fleet/pattern';
import { SnapshotStore } from '../src/fleet/snapshot-store';

const BLOCK = 64 * 1024;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function seconds(since: bigint): number {
  return Number(process.hrtime.bigint() - since) / 1e9;
}

function writeVolume(file: string, sizeBytes: number): void {
  const fd = openSync(file, 'w');
  try {
    const piece = Buffer.allocUnsafe(16 * MiB);
    for (let at = 0; at < sizeBytes; at += piece.length) {
      const part = piece.subarray(0, Math.min(piece.length, sizeBytes - at));
      fillPattern('bench-volume', part, at);
      writeSync(fd, part, 0, part.length, at);
    }
  } finally {
    closeSync(fd);
  }
}

/** Overwrites `fraction` of the volume's blocks (distinct, random) with new content. */
function changeBlocks(file: string, sizeBytes: number, fraction: number): number {
  const blocks = sizeBytes / BLOCK;
  const chosen = new Set<number>();
  while (chosen.size < Math.round(blocks * fraction)) chosen.add(randomInt(blocks));
  const fd = openSync(file, 'r+');
  try {
    const data = Buffer.allocUnsafe(BLOCK);
    for (const b of chosen) {
      fillPattern(`changed-${b}`, data);
      writeSync(fd, data, 0, BLOCK, b * BLOCK);
    }
  } finally {
    closeSync(fd);
  }
  return chosen.size;
}

async function snapshot(store: SnapshotStore, file: string, meta: SnapshotUploadMeta) {
  const fh = await open(file, 'r');
  try {
    const writer = await store.openUpload(meta);
    await writer.uploadFrom(async (position, target) => {
      const { bytesRead } = await fh.read(target, 0, target.length, position);
      return bytesRead;
    });
    return await writer.commit();
  } finally {
    await fh.close();
  }
}

async function main(): Promise<void> {
  const sizeMiB = Number(process.argv[2] ?? 1024);
  const runs = Number(process.argv[3] ?? 3);
  const dir = mkdtempSync(path.join(process.argv[4] ?? os.tmpdir(), 'rehome-bench-snap-'));
  const sizeBytes = sizeMiB * MiB;
  const volume = path.join(dir, 'volume.img');
  const cpPath = path.join(dir, 'cp.img');
  const storeDir = path.join(dir, 'object-store');
  const meta = (snapshotId: string, createdAt: string): SnapshotUploadMeta => ({
    snapshotId,
    account: 'acct-bench',
    instanceId: 'i-bench',
    volumeId: 'v-bench',
    sizeBytes,
    blockSize: BLOCK,
    sourceEvent: 'manual',
    createdAt,
  });
  let store: SnapshotStore | undefined;
  try {
    writeVolume(volume, sizeBytes);
    readFileSync(volume); // warm the page cache, as cp and the snapshot both read it
    const fullRates: number[] = [];
    const cpRates: number[] = [];
    for (let r = -1; r < runs; r++) {
      rmSync(cpPath, { force: true });
      spawnSync('sync');
      let t = process.hrtime.bigint();
      const cp = spawnSync('cp', [volume, cpPath]);
      if (cp.status !== 0) throw new Error(`cp failed: ${cp.stderr}`);
      const cpRate = sizeMiB / seconds(t);
      rmSync(cpPath, { force: true });

      await store?.close();
      rmSync(storeDir, { recursive: true, force: true });
      store = new SnapshotStore(new FileObjectStore(storeDir));
      spawnSync('sync');
      t = process.hrtime.bigint();
      const full = await snapshot(store, volume, meta('snap-full', '2025-01-01T00:00:00.000Z'));
      const fullRate = sizeMiB / seconds(t);
      if (full.bytesUploaded !== sizeBytes)
        throw new Error(`full snapshot uploaded ${full.bytesUploaded} bytes`);
      if (r < 0) continue; // warm-up
      cpRates.push(cpRate);
      fullRates.push(fullRate);
      console.log(`run ${r + 1}: cp ${cpRate.toFixed(0)} MiB/s, full snapshot ${fullRate.toFixed(0)} MiB/s`);
    }

    const changed = changeBlocks(volume, sizeBytes, 0.01);
    spawnSync('sync');
    const t = process.hrtime.bigint();
    const incremental = await snapshot(store!, volume, meta('snap-incr', '2025-01-02T00:00:00.000Z'));
    const incrSecs = seconds(t);
    console.log(
      `incremental: ${changed} blocks changed, ${incremental.bytesUploaded} bytes uploaded in ${incrSecs.toFixed(2)} s`,
    );
    // Spot-check the restore path: the incremental snapshot reads back as the changed volume.
    const image = readFileSync(volume);
    for await (const { firstChunk, data } of store!.readAll('acct-bench', 'snap-incr')) {
      if (!data.equals(image.subarray(firstChunk * BLOCK, firstChunk * BLOCK + data.length))) {
        throw new Error(`snapshot differs from the volume at chunk ${firstChunk}`);
      }
    }

    const fullMBps = median(fullRates) * (MiB / 1e6);
    const cpMBps = median(cpRates) * (MiB / 1e6);
    console.log(
      JSON.stringify({
        sizeMiB,
        fullMBps: Math.round(fullMBps),
        cpMBps: Math.round(cpMBps),
        fullVsCp: Number((fullMBps / cpMBps).toFixed(2)),
        incrementalBytesRatio: Number((incremental.bytesUploaded / sizeBytes).toFixed(4)),
      }),
    );
  } finally {
    await store?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
