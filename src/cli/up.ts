import type { Command } from 'commander';
import { CliContext } from './context';
import { parseCount } from './sizes';

export function registerUp(program: Command): void {
  program
    .command('up')
    .description(
      'start the embedded Temporal dev server (unless TEMPORAL_ADDRESS is set) and the workers; Ctrl-C stops',
    )
    .option('--ip <ip>', 'address the embedded server listens on', '127.0.0.1')
    .option('--port <port>', 'gRPC port of the embedded server (default 7233)', (v) =>
      parseCount(v, '--port'),
    )
    .option('--ui-port <port>', 'Web UI port of the embedded server (default 8233)', (v) =>
      parseCount(v, '--ui-port'),
    )
    .action(async (opts: { ip: string; port?: number; uiPort?: number }, command: Command) => {
      const ctx = CliContext.of(command);
      // Loaded here: the worker side (native runtime, host agents) is heavy and only `up` needs it.
      const { shutdownSignals, startStackUnlessSignalled } = await import('./stack');
      const signals = shutdownSignals();
      const stack = await startStackUnlessSignalled(
        { dataDir: ctx.dataDir, ip: opts.ip, port: opts.port, uiPort: opts.uiPort },
        signals.signalled,
      );
      const { target } = stack;
      ctx.emit({
        address: target.address,
        namespace: target.namespace,
        uiUrl: target.uiUrl,
        embedded: Boolean(stack.server),
        dataDir: ctx.dataDir,
      });
      ctx.say(
        `Temporal   ${target.address} (namespace ${target.namespace}${stack.server ? ', embedded' : ''})`,
      );
      if (target.uiUrl) ctx.say(`Web UI     ${target.uiUrl}`);
      ctx.say(`data       ${ctx.dataDir}`);
      ctx.say(
        `workers    control + ${stack.workers.hosts().length} host(s), new hosts join as they are added`,
      );
      ctx.say('Ctrl-C to stop');
      await signals.signalled;
      ctx.say('stopping workers and server...');
      await stack.stop();
      signals.dispose();
    });
}
