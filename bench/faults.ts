/**
 * bench:faults — what rehome survives, with figures (issue 4): live migrations of writing instances
 * while host-agent worker processes are SIGKILLed, a load run of 500 concurrent small migrations on
 * the embedded server, and the bad-input table. Prints a table; the last line is one JSON object, in
 * which `migrations` and `completed` count both the crash and the load runs, and `checkerViolations`
 * the fleet checker's findings after both. Exits non-zero when any invariant broke.
 *
 *   npm run bench:faults [-- --crash-migrations 20 --kills 10 --seed 1 --load 500 --concurrency 500]
 */
import { Command } from 'commander';
import { formatDuration } from '../src/contracts';
import { table } from '../src/cli/format';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { runBadInputs } from '../test/helpers/bad-inputs';
import { startCluster } from '../test/helpers/cluster';
import { runCrashMigrations } from '../test/helpers/crash-driver';
import { runLoad } from '../test/helpers/load-driver';

interface Options {
  crashMigrations: number;
  kills: number;
  seed: number;
  load: number;
  concurrency: number;
  verbose: boolean;
}

const round = (x: number, digits = 2) => Math.round(x * 10 ** digits) / 10 ** digits;
const int = (value: string) => {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`expected a whole number >= 1, got ${value}`);
  return n;
};

async function main(argv: string[]): Promise<void> {
  const opts = new Command('bench:faults')
    .option('--crash-migrations <n>', 'live migrations in the worker-crash run (at least 20)', int, 20)
    .option('--kills <n>', 'SIGKILLs of host-agent processes during that run', int, 10)
    .option('--seed <n>', 'seed of the crash run (victims and delays)', int, 1)
    .option('--load <n>', 'migrations in the load run', int, 500)
    .option('--concurrency <n>', 'load migrations in flight at once', int, 500)
    .option('--verbose', 'print the drivers’ progress lines', false)
    .parse(argv)
    .opts<Options>();
  // The bad-input table and the kills fail workflows and activities on purpose: SDK warnings about
  // them would bury the report, so only real errors are printed.
  Runtime.install({
    logger: new DefaultLogger('ERROR'),
    telemetryOptions: { logging: { filter: { core: 'ERROR', other: 'ERROR' } } },
    shutdownSignals: [],
  });
  const say = (line: string) => console.log(line);
  const log = opts.verbose ? say : undefined;

  say(`crash: ${opts.crashMigrations} migrations, ${opts.kills} kills (seed ${opts.seed})…`);
  const crash = await runCrashMigrations({
    migrations: opts.crashMigrations,
    kills: opts.kills,
    seed: opts.seed,
    log,
  });
  for (const failure of crash.failures) say(`  crash failure: ${failure}`);
  for (const corrupt of crash.corrupt) say(`  corrupt image: ${corrupt}`);
  for (const violation of crash.violations) say(`  checker: ${violation}`);

  say(`load: ${opts.load} migrations, ${opts.concurrency} at once…`);
  const load = await runLoad({
    migrations: opts.load,
    concurrency: opts.concurrency,
    onProgress: (closed, total) => {
      if (closed % 50 === 0 || closed === total) say(`  ${closed}/${total} closed`);
    },
  });
  for (const f of load.failures) say(`  load failure: ${f.workflowId}: ${f.message}`);
  for (const v of load.checkerViolations) say(`  checker after load: ${v.message}`);

  say('bad inputs…');
  const cluster = await startCluster();
  let bad;
  try {
    bad = await runBadInputs(cluster, { log });
  } finally {
    await cluster.stop();
  }
  for (const u of bad.unclear) say(`  unclear: ${u.case.surface} ${u.case.name}: ${u.why}`);

  const p = (x: number) => formatDuration(x);
  console.log(
    table(
      ['run', 'figure', 'value'],
      [
        ['worker crash', 'migrations completed', `${crash.completed} of ${crash.migrations}`],
        [
          '',
          'SIGKILLs (mid-switch / mid-sync)',
          `${crash.kills} (${crash.killsMidSwitch} / ${crash.killsMidSync})`,
        ],
        ['', 'corrupt images', crash.corruptImages],
        ['', 'checker violations', crash.checkerViolations],
        [
          '',
          'bytes re-copied (max per kill per transfer)',
          `${crash.recopiedBytes} (${crash.maxRecopiedPerKillPerTransfer} ≤ ${crash.chunkBytes})`,
        ],
        ['', 'took', p(crash.durationMs)],
        [
          'load',
          'migrations completed',
          `${load.completed} of ${load.migrations} (${opts.concurrency} at once)`,
        ],
        ['', 'throughput', `${round(load.migrationsPerSec, 3)} migrations/s`],
        [
          '',
          'orchestration overhead p50 / p99 / max',
          `${p(load.overheadP50Ms)} / ${p(load.overheadP99Ms)} / ${p(load.overheadMaxMs)}`,
        ],
        ['', 'checker violations', load.checkerViolations.length + load.inventoryProblems.length],
        ['', 'took', p(load.wallMs)],
        ['bad input', 'cases tried', bad.tried],
        ['', 'unclear (or changed data)', bad.unclear.length],
      ],
    ),
  );

  const summary = {
    migrations: crash.migrations + load.migrations,
    kills: crash.kills,
    completed: crash.completed + load.completed,
    corruptImages: crash.corruptImages,
    checkerViolations:
      crash.checkerViolations + load.checkerViolations.length + load.inventoryProblems.length,
    loadMigrationsPerSec: round(load.migrationsPerSec, 3),
    overheadP99Ms: Math.round(load.overheadP99Ms),
    badInputsTried: bad.tried,
    badInputsUnclear: bad.unclear.length,
  };
  const ok =
    summary.completed === summary.migrations &&
    summary.corruptImages === 0 &&
    summary.checkerViolations === 0 &&
    summary.badInputsUnclear === 0;
  if (!ok) process.exitCode = 1;
  console.log(JSON.stringify(summary));
}

main(process.argv).catch((err) => {
  console.error(err);
  process.exit(1);
});
