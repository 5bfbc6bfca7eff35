import { WorkflowFailedError, type Client, type WorkflowHandle } from '@temporalio/client';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CONTROL_TASK_QUEUE,
  DEFAULT_BLOCK_SIZE,
  errorMessage,
  formatBytes,
  MiB,
  type FleetLayout,
  type LiveMigrationResult,
  type MigrationProgress,
} from '../../src/contracts';
import { checkFleet } from '../../src/fleet/fleet-check';
import { runningWorkflows } from '../../src/temporal/running-workflows';
import type { InstanceRecord as HostInstanceRecord } from '../../src/fleet/host-agent';
import { openInventory, type Inventory } from '../../src/fleet/inventory';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { kernelCopyAvailable } from '../../src/fleet/kernel-copy';
import { copyChunkBlocks } from '../../src/fleet/replica';
import {
  overlayLoggedWrites,
  readWorkloadLog,
  writeSeed,
  type WorkloadLogEntry,
} from '../../src/fleet/workload-log';
import { startProcessCluster, type ProcessCluster } from './process-cluster';

/**
 * The worker-crash fault run (issue 4, part 2): live migrations of writing instances while host-agent
 * worker processes are killed with SIGKILL, aimed at the switch and at the sync, and restarted. Then
 * every image is checked against the workloads' own logs, the fleet against its invariants, and the
 * sync engine's re-copy counter against one chunk per kill per transfer.
 *
 * Hosts come in pairs served by one process each (a switch needs both agents in one process, see
 * process-cluster.ts); every instance migrates back and forth within its pair, so a kill takes down
 * a migration's source and target agents together, mid-whatever they were doing.
 */
export interface CrashRunOptions {
  /** Live migrations to run in all. */
  migrations: number;
  /** SIGKILLs to deliver while they run (fewer if the migrations finish first). */
  kills: number;
  /** Seeds the choice of victims and delays, so a run can be repeated. */
  seed: number;
  /** Host pairs (worker processes); default 2. */
  hostPairs?: number;
  /** Instances (all writing), default one per host. */
  instances?: number;
  /** Default 32 MiB. */
  volumeSizeBytes?: number;
  /** Background copy limit of every migration, so kills can land mid-sync; default 8 MiB/s. */
  bandwidthBytesPerSec?: number;
  /** Each instance's workload; default 1 MiB/s of 4 KiB writes. */
  writeBytesPerSec?: number;
  /** How long a killed process stays down, ms; default 300 to 1500. */
  restartDelayMs?: [number, number];
  /** Pause between a restart and the next kill, ms; default 500 to 3000. */
  killGapMs?: [number, number];
  /** Snapshot before each switch (the liveMigration default); default true. */
  snapshot?: boolean;
  /** Migrations still running after this long count as not completed; default 15 minutes. */
  timeoutMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

export interface KillEvent {
  atMs: number;
  hosts: string[];
  /** What the driver aimed at. */
  aim: 'switch' | 'sync' | 'any';
  /** The victim migration's phase (from its progress query) just before the kill. */
  phase: string;
  /** The source had paused the instance and the target had not yet recorded the switch. */
  midSwitch: boolean;
  migrationId?: string;
}

export interface CrashFigures {
  migrations: number;
  kills: number;
  completed: number;
  corruptImages: number;
  checkerViolations: number;
  /** Bytes the sync engine copied twice, over every migration (its own counter). */
  recopiedBytes: number;
  /** Largest re-copy of one transfer divided by the kills it went through (at least 1). */
  maxRecopiedPerKillPerTransfer: number;
  /** The engine's largest chunk: the bound on re-copy per kill per transfer. */
  chunkBytes: number;
  killsMidSwitch: number;
  killsInSwitchPhase: number;
  killsMidSync: number;
  /**
   * Workload writes in flight when their process was killed, whose bytes landed but were never
   * logged (an unacknowledged write may land; the checker accepts exactly those, one per kill).
   */
  unackedWritesLanded: number;
  failures: string[];
  violations: string[];
  corrupt: string[];
  killEvents: KillEvent[];
  durationMs: number;
}

interface MigrationRun {
  n: number;
  workflowId: string;
  instanceId: string;
  sourceHostId: string;
  targetHostId: string;
  handle: WorkflowHandle;
  startedAtMs: number;
  endedAtMs?: number;
  result?: LiveMigrationResult;
  error?: string;
  /** Kills of this migration's process while it ran. */
  kills: number;
}

/** mulberry32: small, fast, seedable. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function readRecord(dataDir: string, hostId: string, instanceId: string): HostInstanceRecord | undefined {
  try {
    const file = path.join(dataDir, 'hosts', hostId, 'instances', `${instanceId}.json`);
    return JSON.parse(fs.readFileSync(file, 'utf8')) as HostInstanceRecord;
  } catch {
    return undefined; // absent, or being replaced (atomic rename) right now
  }
}

export async function runCrashMigrations(options: CrashRunOptions): Promise<CrashFigures> {
  const pairs = options.hostPairs ?? 2;
  const hostGroups = Array.from({ length: pairs }, (_, p) => [`h-${2 * p + 1}`, `h-${2 * p + 2}`]);
  const cluster = await startProcessCluster({ hostGroups });
  try {
    return await new CrashRun(cluster, options).run();
  } finally {
    await cluster.stop();
  }
}

class CrashRun {
  private readonly rand: () => number;
  private readonly log: (line: string) => void;
  private readonly runs: MigrationRun[] = [];
  private readonly killEvents: KillEvent[] = [];
  /** Kill times per host, for the image check's allowance of unacknowledged writes. */
  private readonly killTimes = new Map<string, number[]>();
  private readonly startedAt = Date.now();
  private migrationsDone = false;
  private readonly client: Client;

  constructor(
    private readonly cluster: ProcessCluster,
    private readonly opts: CrashRunOptions,
  ) {
    this.rand = random(opts.seed);
    this.log = opts.log ?? (() => undefined);
    this.client = cluster.client;
  }

  private between([lo, hi]: [number, number]): number {
    return lo + Math.floor(this.rand() * (hi - lo + 1));
  }

  private partner(hostId: string): string {
    const group = this.cluster.hostGroups.find((g) => g.includes(hostId))!;
    return group.find((h) => h !== hostId)!;
  }

  async run(): Promise<CrashFigures> {
    const hosts = this.cluster.hostGroups.flat();
    const instances = this.opts.instances ?? hosts.length;
    const volumeSizeBytes = this.opts.volumeSizeBytes ?? 32 * MiB;
    const layout: FleetLayout = await this.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: `crash-fleet-${this.opts.seed}`,
      args: [
        {
          hosts: hosts.length,
          instances,
          volumeSizeBytes,
          workload: { writeBytesPerSec: this.opts.writeBytesPerSec ?? MiB, writeSize: 4096 },
          // Room for every instance on any host, so a migration never waits for capacity here.
          hostCapacity: {
            vcpu: 2 * instances + 2,
            memoryMiB: 4096 * (instances + 1),
            diskBytes: volumeSizeBytes * (instances + 1),
          },
        },
      ],
    });
    this.log(`fleet: ${layout.instances.map((i) => `${i.instanceId}@${i.hostId}`).join(' ')}`);

    const where = new Map(layout.instances.map((i) => [i.instanceId, i.hostId]));
    const migrating = this.runMigrations(where);
    const killer = this.killer();
    await migrating;
    this.migrationsDone = true;
    await killer;
    await this.settleStragglers();

    // Quiesce gracefully: each workload finishes and logs its write in flight, so images are final.
    await this.cluster.stopHosts();
    return await this.check(layout);
  }

  /** Starts the migrations, at most one per instance at a time; resolves when all have ended. */
  private async runMigrations(where: Map<string, string>): Promise<void> {
    const total = this.opts.migrations;
    const ids = [...where.keys()];
    const busy = new Set<string>();
    const broken = new Set<string>();
    let next = 0;
    let started = 0;
    const deadline = this.startedAt + (this.opts.timeoutMs ?? 15 * 60_000);

    const one = async (instanceId: string): Promise<void> => {
      const sourceHostId = where.get(instanceId)!;
      const targetHostId = this.partner(sourceHostId);
      const n = ++started;
      const workflowId = `crash-${this.opts.seed}-m${n}-${instanceId}`;
      const handle = await this.client.workflow.start('liveMigration', {
        taskQueue: CONTROL_TASK_QUEUE,
        workflowId,
        args: [
          {
            instanceId,
            targetHostId,
            bandwidthBytesPerSec: this.opts.bandwidthBytesPerSec ?? 8 * MiB,
            snapshot: this.opts.snapshot ?? true,
          },
        ],
      });
      const run: MigrationRun = {
        n,
        workflowId,
        instanceId,
        sourceHostId,
        targetHostId,
        handle,
        startedAtMs: Date.now(),
        kills: 0,
      };
      this.runs.push(run);
      this.log(`m${n} ${instanceId} ${sourceHostId} → ${targetHostId} started`);
      const left = deadline - Date.now();
      let timer: NodeJS.Timeout | undefined;
      try {
        run.result = await Promise.race([
          handle.result() as Promise<LiveMigrationResult>,
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error('timed out')), Math.max(0, left));
          }),
        ]);
        where.set(instanceId, targetHostId);
        this.log(
          `m${n} completed in ${Math.round((Date.now() - run.startedAtMs) / 1000)} s, recopied ${formatBytes(run.result.bytesRecopied ?? 0)}`,
        );
      } catch (err) {
        run.error = await this.describeFailure(run, err);
        broken.add(instanceId);
        this.log(`m${n} did not complete: ${run.error}`);
      } finally {
        clearTimeout(timer);
        run.endedAtMs = Date.now();
      }
    };

    const lanes: Promise<void>[] = [];
    const lane = async () => {
      for (;;) {
        if (started >= total || Date.now() > deadline) return;
        const instanceId = this.pickIdle(ids, busy, broken, next++);
        if (!instanceId) return;
        busy.add(instanceId);
        try {
          await one(instanceId);
        } finally {
          busy.delete(instanceId);
        }
      }
    };
    for (let i = 0; i < Math.min(ids.length, total); i++) lanes.push(lane());
    await Promise.all(lanes);
  }

  private pickIdle(ids: string[], busy: Set<string>, broken: Set<string>, from: number): string | undefined {
    for (let k = 0; k < ids.length; k++) {
      const id = ids[(from + k) % ids.length];
      if (!busy.has(id) && !broken.has(id)) return id;
    }
    return undefined;
  }

  private async describeFailure(run: MigrationRun, err: unknown): Promise<string> {
    if (err instanceof WorkflowFailedError) return errorMessage(err.cause ?? err);
    const phase = await run.handle
      .query<MigrationProgress>('progress')
      .then((p) => p.phase)
      .catch(() => 'unknown');
    return `${(err as Error).message} (still ${phase} after ${Math.round((Date.now() - run.startedAtMs) / 1000)} s)`;
  }

  /** Kills (and restarts) host processes while migrations run: aimed at the switch, the sync, or anywhere. */
  private async killer(): Promise<void> {
    const aims: KillEvent['aim'][] = ['switch', 'sync', 'any'];
    for (let k = 0; k < this.opts.kills && !this.migrationsDone;) {
      await sleep(this.between(this.opts.killGapMs ?? [500, 3000]));
      let aim = aims[k % aims.length];
      let victim = await this.findVictim(aim);
      if (!victim && aim !== 'any') {
        // Nothing reached that phase in time (e.g. every migration is past its switch): strike anywhere.
        aim = 'any';
        victim = await this.findVictim(aim);
      }
      if (!victim || this.migrationsDone) continue;
      const hostId = victim.run.targetHostId;
      const group = this.cluster.hostGroups.find((g) => g.includes(hostId))!;
      await this.cluster.killHost(hostId, 'SIGKILL');
      const atMs = Date.now();
      for (const h of group) this.killTimes.set(h, [...(this.killTimes.get(h) ?? []), atMs]);
      for (const run of this.runs) {
        if (run.endedAtMs === undefined && group.includes(run.targetHostId)) run.kills++;
      }
      const event: KillEvent = {
        atMs,
        hosts: group,
        aim,
        phase: victim.phase,
        midSwitch: victim.midSwitch,
        migrationId: victim.run.workflowId,
      };
      this.killEvents.push(event);
      k++;
      this.log(
        `kill ${k}: ${group.join(',')} aimed at ${aim}, m${victim.run.n} was ${victim.phase}${victim.midSwitch ? ' (mid-switch)' : ''}`,
      );
      await sleep(this.between(this.opts.restartDelayMs ?? [300, 1500]));
      await this.cluster.restartHost(hostId);
    }
  }

  private running(): MigrationRun[] {
    return this.runs.filter((r) => r.endedAtMs === undefined);
  }

  private async phases(): Promise<{ run: MigrationRun; p: MigrationProgress }[]> {
    const all = await Promise.all(
      this.running().map(async (run) => {
        try {
          return { run, p: await run.handle.query<MigrationProgress>('progress') };
        } catch {
          return undefined;
        }
      }),
    );
    return all.filter((x): x is { run: MigrationRun; p: MigrationProgress } => x !== undefined);
  }

  /**
   * A migration to kill now. 'switch' waits for one to enter its switch and then watches both
   * instance records to strike between the source's pause and the target's switch record; 'sync'
   * waits for one that is copying; 'any' takes whichever runs. Gives up (undefined) after 30 s.
   */
  private async findVictim(
    aim: KillEvent['aim'],
  ): Promise<{ run: MigrationRun; phase: string; midSwitch: boolean } | undefined> {
    const until = Date.now() + 30_000;
    while (Date.now() < until && !this.migrationsDone) {
      const seen = await this.phases();
      if (aim === 'any' && seen.length > 0) {
        const { run, p } = seen[Math.floor(this.rand() * seen.length)];
        return { run, phase: p.phase, midSwitch: false };
      }
      if (aim === 'sync') {
        const copying = seen.filter(({ p }) => p.phase === 'syncing' && p.blocksDone < p.blocksTotal);
        if (copying.length > 0) {
          const { run, p } = copying[Math.floor(this.rand() * copying.length)];
          return { run, phase: p.phase, midSwitch: false };
        }
      }
      if (aim === 'switch') {
        // The switch itself takes milliseconds: watch a migration that is about to switch.
        const before = ['validating', 'reserving', 'instantiating', 'snapshotting', 'switching'];
        const coming = seen.find(({ p }) => before.includes(p.phase));
        if (coming) return this.strikeMidSwitch(coming.run);
      }
      await sleep(aim === 'switch' ? 10 : 50);
    }
    return undefined;
  }

  /**
   * Watches the source's instance records (inotify, with a polling fallback) and strikes the moment
   * the source has paused the instance for this migration while the target has not recorded the
   * switch yet: a window of a few milliseconds.
   */
  private async strikeMidSwitch(
    run: MigrationRun,
  ): Promise<{ run: MigrationRun; phase: string; midSwitch: boolean }> {
    const dataDir = this.cluster.dataDir;
    const dir = path.join(dataDir, 'hosts', run.sourceHostId, 'instances');
    const until = Date.now() + 20_000;
    let wake: () => void = () => undefined;
    let watcher: fs.FSWatcher | undefined;
    try {
      watcher = fs.watch(dir, () => wake());
    } catch {
      // No watch (the directory is being replaced): polling alone.
    }
    try {
      for (;;) {
        const source = readRecord(dataDir, run.sourceHostId, run.instanceId);
        const target = readRecord(dataDir, run.targetHostId, run.instanceId);
        const paused = source?.state === 'paused' && source.migration?.migrationId === run.workflowId;
        const switched = target?.switch !== undefined;
        if (paused && !switched) return { run, phase: 'switching', midSwitch: true };
        if (switched || run.endedAtMs !== undefined || Date.now() > until) {
          const p = await run.handle.query<MigrationProgress>('progress').catch(() => undefined);
          return { run, phase: p?.phase ?? 'unknown', midSwitch: false };
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 5);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    } finally {
      watcher?.close();
    }
  }

  /** Migrations that timed out may still be running: say so in their failure. */
  private async settleStragglers(): Promise<void> {
    for (const run of this.runs) {
      if (run.result || !run.error?.startsWith('timed out')) continue;
      await run.handle.terminate('crash run timed out').catch(() => undefined);
    }
  }

  private async check(layout: FleetLayout): Promise<CrashFigures> {
    const dataDir = this.cluster.dataDir;
    const inventory = openInventory(dataDir);
    try {
      const images = checkImages(dataDir, inventory, layout, this.killTimes);
      const violations = [
        ...inventory.checkConsistency().map((v) => `inventory: ${v}`),
        ...(
          await checkFleet({
            dataDir,
            inventory,
            activeWorkflowIds: (ids) => runningWorkflows(this.client, ids),
          })
        ).map((v) => `${v.kind}: ${v.message}`),
      ];
      // Chunks as the engine cuts them here (larger when the kernel copies): a kill may re-copy one.
      const chunkBytes = copyChunkBlocks(DEFAULT_BLOCK_SIZE, kernelCopyAvailable()) * DEFAULT_BLOCK_SIZE;
      let recopiedBytes = 0;
      let maxPerKill = 0;
      for (const run of this.runs) {
        const recopied = run.result?.bytesRecopied ?? 0;
        recopiedBytes += recopied;
        maxPerKill = Math.max(maxPerKill, recopied / Math.max(1, run.kills));
      }
      const completed = this.runs.filter((r) => r.result && !r.result.restored).length;
      const failures = this.runs
        .filter((r) => !r.result || r.result.restored)
        .map((r) => `${r.workflowId}: ${r.error ?? 'restored from its snapshot instead of migrated'}`);
      return {
        migrations: this.runs.length,
        kills: this.killEvents.length,
        completed,
        corruptImages: images.corrupt.length,
        checkerViolations: violations.length,
        recopiedBytes,
        maxRecopiedPerKillPerTransfer: maxPerKill,
        chunkBytes,
        killsMidSwitch: this.killEvents.filter((e) => e.midSwitch).length,
        killsInSwitchPhase: this.killEvents.filter((e) => e.phase === 'switching').length,
        killsMidSync: this.killEvents.filter((e) => e.phase === 'syncing').length,
        unackedWritesLanded: images.unackedWritesLanded,
        failures,
        violations,
        corrupt: images.corrupt,
        killEvents: this.killEvents,
        durationMs: Date.now() - this.startedAt,
      };
    } finally {
      inventory.close();
    }
  }
}

export interface ImageCheckResult {
  /** One line per volume whose image is not its initial content overlaid with its logged writes. */
  corrupt: string[];
  volumesChecked: number;
  unackedWritesLanded: number;
}

/**
 * Every volume's image, where the inventory says it is, against its initial pattern overlaid with
 * every write its instance's workload logged (on any host). Hosts must be quiet (workloads stopped).
 *
 * A write in flight when its process was SIGKILLed may have reached the image without reaching the
 * log (the workload logs a write once it completed). Its seq is then written again, elsewhere, by
 * the restarted workload: the first seq logged after the kill. A differing slot holding exactly that
 * seq's bytes is such a write, accepted once per kill of a host the instance ran on; anything else
 * that differs is corruption.
 */
export function checkImages(
  dataDir: string,
  inventory: Inventory,
  layout: Pick<FleetLayout, 'instances'>,
  killTimes: Map<string, number[]> = new Map(),
): ImageCheckResult {
  const corrupt: string[] = [];
  let volumesChecked = 0;
  let unackedWritesLanded = 0;
  for (const { instanceId } of layout.instances) {
    const instance = inventory.getInstance(instanceId);
    if (!instance) {
      corrupt.push(`${instanceId}: not in the inventory any more`);
      continue;
    }
    const log = readWorkloadLog(dataDir, instanceId);
    const writeSize = instance.workload.writeSize;
    for (const volume of inventory.listVolumes({ instanceId })) {
      volumesChecked++;
      const file = path.join(dataDir, 'hosts', volume.hostId, 'volumes', `${volume.volumeId}.img`);
      if (!fs.existsSync(file)) {
        corrupt.push(`${volume.volumeId} of ${instanceId}: no image on ${volume.hostId}`);
        continue;
      }
      const actual = fs.readFileSync(file);
      const expected = overlayLoggedWrites(
        patternBytes(volumePatternSeed(volume.volumeId), volume.sizeBytes),
        instanceId,
        volume.volumeId,
        log,
      );
      if (actual.length === expected.length && actual.equals(expected)) continue;
      const landed = unloggedWrites(actual, expected, instanceId, writeSize, log, killTimes);
      if (landed.ok) {
        unackedWritesLanded += landed.slots;
        continue;
      }
      corrupt.push(`${volume.volumeId} of ${instanceId} on ${volume.hostId}: ${landed.why}`);
    }
  }
  return { corrupt, volumesChecked, unackedWritesLanded };
}

function unloggedWrites(
  actual: Buffer,
  expected: Buffer,
  instanceId: string,
  writeSize: number,
  log: WorkloadLogEntry[],
  killTimes: Map<string, number[]>,
): { ok: true; slots: number } | { ok: false; why: string } {
  if (actual.length !== expected.length) {
    return { ok: false, why: `image is ${actual.length} bytes, expected ${expected.length}` };
  }
  const differing: number[] = [];
  for (let at = 0; at < actual.length; at += writeSize) {
    const end = Math.min(at + writeSize, actual.length);
    if (!actual.subarray(at, end).equals(expected.subarray(at, end))) differing.push(at);
  }
  // The seqs in flight at each kill of a host this instance ran on: the first logged after it.
  const hostsRun = new Set(log.map((e) => e.host));
  const inFlight = new Set<number>();
  for (const [hostId, times] of killTimes) {
    if (!hostsRun.has(hostId)) continue;
    for (const t of times) {
      const after = log.find((e) => e.t > t);
      if (after) inFlight.add(after.seq);
    }
  }
  const unexplained = differing.filter((at) => {
    for (const seq of inFlight) {
      if (actual.subarray(at, at + writeSize).equals(patternBytes(writeSeed(instanceId, seq), writeSize))) {
        inFlight.delete(seq);
        return false;
      }
    }
    return true;
  });
  if (unexplained.length === 0) return { ok: true, slots: differing.length };
  const blocks = [...new Set(unexplained.map((at) => Math.floor(at / DEFAULT_BLOCK_SIZE)))];
  return {
    ok: false,
    why: `${unexplained.length} slot(s) of ${writeSize} bytes differ from its initial content overlaid with its ${log.length} logged writes, first at byte ${unexplained[0]} (blocks ${blocks.slice(0, 8).join(', ')}${blocks.length > 8 ? ' …' : ''})`,
  };
}
