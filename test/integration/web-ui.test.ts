import fs from 'node:fs';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { CONTROL_TASK_QUEUE, MiB, type FleetLayout } from '../../src/contracts';
import { startCluster, type TestCluster } from '../helpers/cluster';

const CHROMIUM = process.env.REHOME_CHROMIUM ?? '/usr/bin/chromium';

// What an operator sees: the embedded server's Web UI, in a real browser, finds a migration by the
// InstanceId search attribute and shows its summary and phase.
describe('Temporal Web UI (browser)', () => {
  let cluster: TestCluster;
  let browser: Browser;
  let layout: FleetLayout;
  const workflowId = 'ui-migrate-i-1';

  beforeAll(async () => {
    if (!fs.existsSync(CHROMIUM)) {
      throw new Error(`${CHROMIUM} is missing: run npm install as root, or apt-get install chromium`);
    }
    cluster = await startCluster();
    layout = await cluster.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'ui-fleet-init',
      args: [
        {
          hosts: 2,
          instances: 1,
          volumeSizeBytes: 4 * MiB,
          workload: { writeBytesPerSec: 0, writeSize: 4096 },
        },
      ],
    });
    const instance = layout.instances[0];
    const target = layout.hosts.find((h) => h.hostId !== instance.hostId)!.hostId;
    await cluster.client.workflow.execute('liveMigration', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId,
      args: [{ instanceId: instance.instanceId, targetHostId: target }],
      staticSummary: `live-migrate ${instance.instanceId} ${instance.hostId} → ${target}`,
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await cluster?.stop();
  });

  it('lists the migration under InstanceId = "i-1" and shows its summary and phase', async () => {
    const page = await browser.newPage();
    const query = encodeURIComponent(`InstanceId = "${layout.instances[0].instanceId}"`);
    await page.goto(`${cluster.server.uiUrl}/namespaces/default/workflows?query=${query}`);
    await page.getByText(workflowId).first().waitFor({ timeout: 30_000 });
    // The fleet-init workflow touched no single instance, so the filter must leave it out.
    expect(await page.getByText('ui-fleet-init').count()).toBe(0);

    const { runId } = await cluster.client.workflow.getHandle(workflowId).describe();
    await page.goto(`${cluster.server.uiUrl}/namespaces/default/workflows/${workflowId}/${runId}/history`);
    await page
      .getByText(`live-migrate ${layout.instances[0].instanceId}`)
      .first()
      .waitFor({ timeout: 30_000 });
    await page
      .getByText(/completed/i)
      .first()
      .waitFor({ timeout: 30_000 });
    const shot = path.join(process.env.REHOME_SCREENSHOT_DIR ?? cluster.dataDir, 'web-ui.png');
    await page.screenshot({ path: shot, fullPage: true });
    expect(fs.statSync(shot).size).toBeGreaterThan(10_000);
  });
});
