import { startDevServer } from '../../src/temporal/dev-server';

// Starts a dev server and then just lives, so a test can kill this process with SIGKILL and check the
// server does not outlive it.
async function main() {
  const [dataDir, port, uiPort] = process.argv.slice(2);
  await startDevServer({ dataDir, port: Number(port), uiPort: Number(uiPort) });
  process.stdout.write('ready\n');
  setInterval(() => undefined, 60_000);
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(1);
});
