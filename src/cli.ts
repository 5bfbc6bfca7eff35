import { Command, CommanderError } from 'commander';
import { version } from '../package.json';
import { CliContext } from './cli/context';
import { errorLine, exitCodeFor } from './cli/errors';
import { registerFleet } from './cli/fleet';
import { registerMigrate } from './cli/migrate';
import { registerRestore } from './cli/restore';
import { registerSnapshot } from './cli/snapshot';
import { registerUp } from './cli/up';
import { registerVolume } from './cli/volume';
import { registerWatch } from './cli/watch';

export function buildProgram(): Command {
  const program = new Command('rehome')
    .description('VM fleet operations as durable Temporal workflows')
    .version(version)
    .option('--json', 'print machine-readable JSON only')
    .option('--data-dir <dir>', 'data directory (default $REHOME_DATA_DIR or ./.rehome)')
    .showSuggestionAfterError(true)
    .exitOverride()
    // Errors are printed once, by main(), as one line.
    .configureOutput({ outputError: () => undefined });
  registerUp(program);
  registerFleet(program);
  registerMigrate(program);
  registerWatch(program);
  registerVolume(program);
  registerSnapshot(program);
  registerRestore(program);
  // Subcommands inherit the error handling (exitOverride and output are not inherited by default).
  const inherit = (command: Command) => {
    for (const sub of command.commands) {
      sub.exitOverride().configureOutput({ outputError: () => undefined });
      inherit(sub);
    }
  };
  inherit(program);
  return program;
}

/** Runs the CLI; resolves with the exit code. Errors become one line on stderr, never a stack trace. */
export async function main(argv: string[] = process.argv): Promise<number> {
  let code = 0;
  try {
    await buildProgram().parseAsync(argv);
  } catch (err) {
    if (
      err instanceof CommanderError &&
      ['commander.helpDisplayed', 'commander.help', 'commander.version'].includes(err.code)
    ) {
      code = err.exitCode;
    } else {
      console.error(`rehome: ${errorLine(err)}`);
      code = exitCodeFor(err);
    }
  } finally {
    for (const ctx of CliContext.opened.splice(0)) await ctx.close().catch(() => undefined);
  }
  return code;
}

/** Entry for bin/rehome.js and `npm run rehome`. */
export function run(): void {
  process.on('unhandledRejection', (err) => {
    console.error(`rehome: ${errorLine(err)}`);
    process.exit(1);
  });
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(`rehome: ${errorLine(err)}`);
      process.exit(1);
    },
  );
}

if (require.main === module) run();
