import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import {
  CONTROL_TASK_QUEUE,
  MiB,
  type FleetLayout,
  type VolumeExportResult,
  type VolumeImportResult,
} from '../../src/contracts';
import { startCluster, type TestCluster } from '../helpers/cluster';

// A user's real data (an ext4 filesystem image) goes in, moves with its instance, and comes out byte
// for byte: checked with cmp and e2fsck, the standard tools the raw-image layout exists for.
describe('imported image through a live migration (integration)', () => {
  let cluster: TestCluster;
  let layout: FleetLayout;
  let workDir: string;

  beforeAll(async () => {
    cluster = await startCluster();
    workDir = fs.mkdtempSync(path.join(cluster.dataDir, 'user-'));
    layout = await cluster.client.workflow.execute('fleetInit', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-import-fleet',
      args: [
        {
          hosts: 2,
          instances: 1,
          volumeSizeBytes: 4 * MiB,
          workload: { writeBytesPerSec: 0, writeSize: 4096 },
          hostCapacity: { vcpu: 8, memoryMiB: 16384, diskBytes: 256 * MiB },
        },
      ],
    });
  });

  afterAll(async () => {
    await cluster?.stop();
  });

  it('imports, migrates and exports an ext4 image unchanged', async () => {
    const content = path.join(workDir, 'content');
    fs.mkdirSync(content);
    fs.writeFileSync(path.join(content, 'hello.txt'), 'hello from the user\n');
    fs.writeFileSync(path.join(content, 'random.bin'), Buffer.alloc(3 * MiB, 'abc'));
    const image = path.join(workDir, 'disk.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', content, image, '24M'], {
      env: { ...process.env, E2FSPROGS_FAKE_TIME: '1' },
    });

    const instance = layout.instances[0];
    const imported: VolumeImportResult = await cluster.client.workflow.execute('volumeImport', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-import',
      args: [{ instanceId: instance.instanceId, path: image }],
    });
    expect(imported.sizeBytes).toBe(24 * MiB);
    expect(imported.hostId).toBe(instance.hostId);

    const target = layout.hosts.find((h) => h.hostId !== instance.hostId)!.hostId;
    await cluster.client.workflow.execute('liveMigration', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-import-migrate',
      args: [{ instanceId: instance.instanceId, targetHostId: target }],
    });

    const onTarget = path.join(cluster.dataDir, 'hosts', target, 'volumes', `${imported.volumeId}.img`);
    // cmp exits non-zero (and execFileSync throws) on the first differing byte.
    execFileSync('cmp', [image, onTarget]);
    execFileSync('e2fsck', ['-f', '-n', onTarget], { stdio: 'pipe' });

    const out = path.join(workDir, 'out.img');
    const exported: VolumeExportResult = await cluster.client.workflow.execute('volumeExport', {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: 'it-export',
      args: [{ volumeId: imported.volumeId, path: out }],
    });
    expect(exported.hostId).toBe(target);
    expect(exported.sha256).toBe(imported.sha256);
    execFileSync('cmp', [image, out]);
  });
});
