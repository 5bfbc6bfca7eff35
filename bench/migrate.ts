/**
 * bench:migrate — (a) post-sync of a 512 MiB volume with the workload idle vs `cp` of the same image on the
 * same disk; (b) switch downtime at 64 MiB and 1 GiB, nine migrations each (the issue asks for at least
 * five) of an instance writing 4 MiB/s, once a millisecond, measured from the workload log as the gap
 * between the last write on the source and the first on the target. Last line: one JSON object.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  CONTROL_TASK_QUEUE,
  MiB,
  GiB,
  type FleetLayout,
  type FleetSpec,
  type LiveMigrationResult,
} from '../src/contracts';
import { HostStore } from '../src/fleet/host-store';
import { readWorkloadLog } from '../src/fleet/workload-log';
import { installCliRuntime } from '../src/worker';
import { startCluster, type TestCluster } from '../test/helpers/cluster';

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** cp on this VM swings 3x from run to run (freed page cache is handed back to the host lazily): five runs each. */
const SYNC_RUNS = 5;
const DOWNTIME_RUNS = 9;
const round = (x: number, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;

async function fleet(cluster: TestCluster, spec: FleetSpec): Promise<FleetLayout> {
  return cluster.client.workflow.execute('fleetInit', {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId: `bench-fleet-${Date.now()}`,
    args: [spec],
  });
}

async function migrate(
  cluster: TestCluster,
  instanceId: string,
  targetHostId: string,
  snapshot = true,
): Promise<LiveMigrationResult> {
  return cluster.client.workflow.execute('liveMigration', {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId: `bench-migrate-${instanceId}-${targetHostId}-${Date.now()}`,
    args: [{ instanceId, targetHostId, snapshot }],
  });
}

/** Gap between the source's last write and the target's first, from the workload's own log. */
function switchGapMs(
  dataDir: string,
  instanceId: string,
  sourceHostId: string,
  targetHostId: string,
): number {
  const log = readWorkloadLog(dataDir, instanceId);
  for (let i = log.length - 1; i > 0; i--) {
    if (log[i].host === targetHostId && log[i - 1].host === sourceHostId) return log[i].t - log[i - 1].t;
  }
  throw new Error(
    `no switch from ${sourceHostId} to ${targetHostId} found in the workload log of ${instanceId}`,
  );
}

async function syncThroughput() {
  const cluster = await startCluster();
  try {
    const size = 512 * MiB;
    const layout = await fleet(cluster, {
      hosts: 2,
      instances: 1,
      volumeSizeBytes: size,
      workload: { writeBytesPerSec: 0, writeSize: 4096 },
    });
    const instance = layout.instances[0];
    const volume = layout.volumes[0];
    let [from, to] = [instance.hostId, layout.hosts.find((h) => h.hostId !== instance.hostId)!.hostId];
    const cpMs: number[] = [];
    const syncMs: number[] = [];
    // Run 0 is a warm-up: this VM backs memory lazily and the JIT is cold, and neither is what we measure.
    for (let run = 0; run <= SYNC_RUNS; run++) {
      const image = new HostStore(cluster.dataDir, from).imagePath(volume.volumeId);
      const copy = path.join(path.dirname(image), 'cp-bench.img');
      execFileSync('sync');
      const t0 = performance.now();
      execFileSync('cp', [image, copy]);
      const cpTook = performance.now() - t0;
      fs.rmSync(copy);
      execFileSync('sync');
      // Post-sync alone, as cp is a copy alone: the pre-migration snapshot (bench:snapshot measures
      // it) would leave 512 MiB of fresh pack pages competing with the copy on this VM.
      const result = await migrate(cluster, instance.instanceId, to, false);
      const took = result.phaseMs?.syncing;
      if (!took) throw new Error('the migration result has no syncing phase time');
      console.log(
        `run ${run}${run === 0 ? ' (warm-up)' : ''}: post-sync ${round(took)} ms, cp ${round(cpTook)} ms`,
      );
      if (run > 0) {
        cpMs.push(cpTook);
        syncMs.push(took);
      }
      [from, to] = [to, from];
    }
    const cpMBps = size / 1e6 / (median(cpMs) / 1000);
    const syncMBps = size / 1e6 / (median(syncMs) / 1000);
    console.log(
      `post-sync 512 MiB: ${round(syncMBps)} MB/s; cp: ${round(cpMBps)} MB/s (medians of ${SYNC_RUNS})`,
    );
    return { syncMBps, cpMBps };
  } finally {
    await cluster.stop();
  }
}

async function downtime(sizeBytes: number, runs: number) {
  // The guest writes 1024 times a second, so once a millisecond rather than five at a time every 5 ms
  // (the default loop period, which saves idle wake-ups): with bursts, each gap also held up to 5 ms
  // of the guest not having written yet, and the medians of either size swung between about 2 and
  // 5 ms from one run of the bench to the next (downtimeRatio 0.37 to 2.7, the same code).
  const cluster = await startCluster({ workloadTickMs: 1 });
  try {
    const layout = await fleet(cluster, {
      hosts: 2,
      instances: 1,
      volumeSizeBytes: sizeBytes,
      workload: { writeBytesPerSec: 4 * MiB, writeSize: 4096 },
    });
    const instanceId = layout.instances[0].instanceId;
    let [from, to] = [
      layout.instances[0].hostId,
      layout.hosts.find((h) => h.hostId !== layout.instances[0].hostId)!.hostId,
    ];
    const gaps: number[] = [];
    for (let i = 0; i < runs; i++) {
      const result = await migrate(cluster, instanceId, to);
      const gap = switchGapMs(cluster.dataDir, instanceId, from, to);
      gaps.push(gap);
      console.log(
        `downtime ${sizeBytes / MiB} MiB run ${i + 1}: ${round(gap)} ms (workflow reported ${round(result.downtimeMs)} ms)`,
      );
      [from, to] = [to, from];
    }
    return median(gaps);
  } finally {
    await cluster.stop();
  }
}

async function main() {
  installCliRuntime();
  const { syncMBps, cpMBps } = await syncThroughput();
  // Each gap is a few ms whatever the size, so their ratio is noisy: nine runs each (see downtime()).
  const downtimeMs64MiB = await downtime(64 * MiB, DOWNTIME_RUNS);
  const downtimeMs1GiB = await downtime(1 * GiB, DOWNTIME_RUNS);
  console.log(
    JSON.stringify({
      syncMBps: round(syncMBps),
      cpMBps: round(cpMBps),
      syncVsCp: round(syncMBps / cpMBps, 3),
      downtimeMs64MiB: round(downtimeMs64MiB),
      downtimeMs1GiB: round(downtimeMs1GiB),
      downtimeRatio: round(downtimeMs1GiB / downtimeMs64MiB, 3),
    }),
  );
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
