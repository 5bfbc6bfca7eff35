import { WorkflowNotFoundError } from '@temporalio/client';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { checkFleet } from '../../src/fleet/fleet-check';
import { openInventory } from '../../src/fleet/inventory';
import { BAD_INPUT_CASES, runBadInputs } from '../helpers/bad-inputs';
import { startCluster, type TestCluster } from '../helpers/cluster';

// Every CLI command and workflow input, tried with malformed, missing, oversized, negative and hostile
// values against a real server and workers: each must fail clearly and change no byte of the fleet.
describe('bad-input table (integration)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await startCluster();
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  test('every bad input gets a clear error and changes nothing', async () => {
    const started = Date.now();
    const log = process.env.BAD_INPUT_LOG
      ? (line: string) => void process.stdout.write(`${Date.now() - started} ms ${line}\n`)
      : undefined;
    const report = await runBadInputs(cluster, { log });
    expect(report.tried).toBe(BAD_INPUT_CASES.length);
    expect(report.tried).toBeGreaterThanOrEqual(80);
    expect(report.unclear.map((u) => `${u.case.name}: ${u.why}`)).toEqual([]);
    expect(report.changed).toBe(false);
    expect(report.fingerprintAfter).toBe(report.fingerprintBefore);

    // Nothing the refused requests started left a reservation, image or file behind.
    const inventory = openInventory(cluster.dataDir);
    try {
      const violations = await checkFleet({
        dataDir: cluster.dataDir,
        inventory,
        activeWorkflowIds: async (ids) => {
          const running = new Set<string>();
          for (const id of ids) {
            const status = await cluster.client.workflow
              .getHandle(id)
              .describe()
              .then(
                (d) => d.status.name,
                (err: unknown) => {
                  if (err instanceof WorkflowNotFoundError) return 'NOT_FOUND';
                  throw err;
                },
              );
            if (status === 'RUNNING') running.add(id);
          }
          return running;
        },
      });
      expect(violations).toEqual([]);
    } finally {
      inventory.close();
    }

    // And `rehome fleet check` says so, having checked reservations against the running workflows.
    const cli = await new Promise<{ code: number; stdout: string; stderr: string }>((done) => {
      execFile(
        process.execPath,
        [path.resolve(__dirname, '../../bin/rehome.js'), 'fleet', 'check'],
        {
          env: {
            ...process.env,
            TEMPORAL_ADDRESS: cluster.server.address,
            TEMPORAL_NAMESPACE: cluster.server.namespace,
            REHOME_DATA_DIR: cluster.dataDir,
          },
          timeout: 60_000,
        },
        (err, stdout, stderr) => done({ code: err ? Number(err.code ?? 1) : 0, stdout, stderr }),
      );
    });
    expect(cli).toMatchObject({ code: 0, stderr: '' });
    expect(cli.stdout.trim()).toMatch(/^fleet OK: 3 hosts, 5 instances, 5 volumes[^;]*$/);
  });
});
