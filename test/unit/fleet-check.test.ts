import Database from 'better-sqlite3';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launchOf, MiB, type FleetLayout } from '../../src/contracts';
import { checkFleet, oversubscriptionRatio, type FleetViolation } from '../../src/fleet/fleet-check';
import { FleetRuntime } from '../../src/fleet/fleet-runtime';
import { HostStore } from '../../src/fleet/host-store';
import { openInventory, type Inventory } from '../../src/fleet/inventory';
import { ReplicaVolume } from '../../src/fleet/replica';
import { capturesDir } from '../../src/fleet/volume-capture';

/** A pid that belonged to a process which has exited: what a SIGKILLed writer leaves in file names. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', '0']);
  return child.pid!;
}

const kinds = (violations: FleetViolation[]) => violations.map((v) => v.kind).sort();

describe('checkFleet', () => {
  let dataDir: string;
  let inventory: Inventory;
  let layout: FleetLayout;

  /** A fleet as fleetInit leaves it: inventory rows, images and host records written by real host agents. */
  beforeEach(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-fleet-check-'));
    inventory = openInventory(dataDir);
    layout = inventory.createFleet('fleet-init-1', {
      hosts: 3,
      instances: 4,
      volumeSizeBytes: 1 * MiB,
      workload: { writeBytesPerSec: 0, writeSize: 4096 },
      instanceShape: { vcpu: 2, memoryMiB: 1024 },
      hostCapacity: { vcpu: 4, memoryMiB: 2048, diskBytes: 8 * MiB },
    });
    const runtime = new FleetRuntime({ dataDir });
    try {
      for (const i of layout.instances) {
        const agent = await runtime.host(i.hostId);
        await agent.launch(launchOf(layout, i));
      }
    } finally {
      await runtime.close();
    }
    inventory.markInstancesRunning(layout.instances.map((i) => i.instanceId));
  });

  afterEach(() => {
    inventory.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  const check = (running?: string[]) =>
    checkFleet({
      dataDir,
      inventory,
      activeWorkflowIds: running && ((ids: string[]) => new Set(ids.filter((id) => running.includes(id)))),
    });
  const first = firstInstanceOf(() => layout);
  const otherHost = (hostId: string) => layout.hosts.find((h) => h.hostId !== hostId)!.hostId;
  const store = (hostId: string) => new HostStore(dataDir, hostId);
  /** Raw SQL for what the inventory's own API refuses to do (which is the point of a checker). */
  const sql = (statement: string, ...params: unknown[]) => {
    const db = new Database(inventory.dbPath);
    try {
      db.pragma('foreign_keys = OFF');
      db.prepare(statement).run(...params);
    } finally {
      db.close();
    }
  };

  test('a clean fleet has no violations, with or without a workflow lookup', async () => {
    expect(await check([])).toEqual([]);
    expect(await check()).toEqual([]);
    expect(oversubscriptionRatio(layout.hosts[0])).toBe(1);
  });

  test('a missing image is reported with where it should be', async () => {
    const { volume } = first();
    fs.rmSync(store(volume.hostId).imagePath(volume.volumeId));
    const violations = await check([]);
    expect(violations).toEqual([
      expect.objectContaining({
        kind: 'missing-image',
        subject: volume.volumeId,
        message: expect.stringContaining(`hosts/${volume.hostId}/volumes/${volume.volumeId}.img`),
      }),
    ]);
  });

  test('an image of the wrong size, and a sidecar that disagrees, are reported', async () => {
    const { volume } = first();
    fs.truncateSync(store(volume.hostId).imagePath(volume.volumeId), volume.sizeBytes - 512);
    expect(await check([])).toEqual([
      expect.objectContaining({
        kind: 'image-size',
        subject: volume.volumeId,
        message: expect.stringMatching(/truncated/),
      }),
    ]);
    fs.truncateSync(store(volume.hostId).imagePath(volume.volumeId), volume.sizeBytes);
    const sidecar = store(volume.hostId).readSidecar(volume.volumeId)!;
    await store(volume.hostId).writeSidecar({ ...sidecar, sizeBytes: 2 * MiB });
    expect(await check([])).toEqual([
      expect.objectContaining({
        kind: 'sidecar-mismatch',
        subject: volume.volumeId,
        message: expect.stringContaining(`says ${2 * MiB} bytes, not ${volume.sizeBytes}`),
      }),
    ]);
  });

  test('an image of the same volume on another host is an orphan', async () => {
    const { volume } = first();
    const from = store(volume.hostId);
    const to = store(otherHost(volume.hostId));
    await to.ensureDir();
    fs.copyFileSync(from.imagePath(volume.volumeId), to.imagePath(volume.volumeId));
    fs.copyFileSync(from.metaPath(volume.volumeId), to.metaPath(volume.volumeId));
    const violations = await check([]);
    expect(violations).toEqual([
      expect.objectContaining({
        kind: 'orphan-image',
        subject: `hosts/${to.hostId}/volumes/${volume.volumeId}`,
        message: expect.stringContaining(`the inventory has volume ${volume.volumeId} on ${volume.hostId}`),
      }),
    ]);
  });

  test('a replica nothing synchronises, and a sync map left by an interrupted finalize, are orphans', async () => {
    const { volume, instance } = first();
    const other = otherHost(volume.hostId);
    await ReplicaVolume.create(store(other), { ...volume, instanceId: instance.instanceId });
    fs.writeFileSync(store(volume.hostId).mapPath(volume.volumeId), 'stale');
    const violations = await check([]);
    expect(kinds(violations)).toEqual(['orphan-replica', 'orphan-replica']);
    expect(violations.map((v) => v.subject).sort()).toEqual(
      [
        `hosts/${other}/volumes/${volume.volumeId}`,
        `hosts/${volume.hostId}/volumes/${volume.volumeId}`,
      ].sort(),
    );
    expect(violations.find((v) => v.subject.includes(volume.hostId))!.message).toMatch(
      /interrupted finalize/,
    );
  });

  test('spill, temp and restore files left by processes and workflows that are gone are orphans', async () => {
    const { volume } = first();
    const root = store(volume.hostId).root;
    const pid = deadPid();
    fs.mkdirSync(capturesDir(root), { recursive: true });
    fs.writeFileSync(path.join(capturesDir(root), `${volume.volumeId}.cap-1.${pid}.spill`), 'x');
    // A spill of a live process (this one) is a capture at work, not an orphan.
    fs.writeFileSync(path.join(capturesDir(root), `${volume.volumeId}.cap-2.${process.pid}.spill`), 'x');
    fs.writeFileSync(`${store(volume.hostId).imagePath(volume.volumeId)}.tmp-${pid}-abcd1234`, 'x');
    fs.mkdirSync(path.join(root, 'restores', 'restore-gone'), { recursive: true });
    fs.writeFileSync(path.join(root, 'restores', 'restore-gone', `${volume.volumeId}.img`), 'x');

    const violations = await check([]);
    expect(kinds(violations)).toEqual(['orphan-restore', 'orphan-spill', 'orphan-temp']);
    expect(violations.find((v) => v.kind === 'orphan-spill')!.message).toContain(`pid ${pid}`);
    // A restore whose workflow still runs owns its directory.
    expect(kinds(await check(['restore-gone']))).toEqual(['orphan-spill', 'orphan-temp']);
  });

  test('reservations must fit the capacity', async () => {
    const host = layout.hosts[0];
    const free = inventory.hostUsage(host.hostId).free;
    sql(
      `INSERT INTO reservations (key, host_id, instance_id, vcpu, memory_mib, disk_bytes, created_at)
       VALUES ('migrate-big', ?, 'i-1', ?, 0, 0, '2025-01-01T00:00:00Z')`,
      host.hostId,
      free.vcpu + 2,
    );
    const violations = await check(['migrate-big']);
    expect(violations).toEqual([
      expect.objectContaining({
        kind: 'over-capacity',
        subject: host.hostId,
        message: expect.stringMatching(/over capacity: \d+ vCPU used of 4 vCPU .*migrate-big/),
      }),
    ]);
  });

  test('a reservation of a workflow that is not running is an orphan (only checkable with a lookup)', async () => {
    const { instance } = first();
    inventory.reserve({
      key: 'migrate-done',
      hostId: otherHost(instance.hostId),
      instanceId: instance.instanceId,
      resources: instance.shape,
    });
    expect(await check([])).toEqual([
      expect.objectContaining({
        kind: 'orphan-reservation',
        subject: 'migrate-done',
        message: expect.stringContaining("DELETE FROM reservations WHERE key = 'migrate-done'"),
      }),
    ]);
    expect(await check(['migrate-done'])).toEqual([]);
    expect(await check()).toEqual([]);
  });

  test('an instance on a host the inventory does not have is reported', async () => {
    const { instance } = first();
    sql('UPDATE instances SET host_id = ? WHERE id = ?', 'h-99', instance.instanceId);
    const violations = await check([]);
    expect(violations).toContainEqual(
      expect.objectContaining({
        kind: 'instance-placement',
        subject: instance.instanceId,
        message: expect.stringContaining('h-99, which does not exist'),
      }),
    );
    // Its real host still runs it: that record is now one nobody owns.
    expect(kinds(violations)).toContain('orphan-instance-record');
  });

  test("the inventory's own broken invariants are reported about their subject, capacity left to the ratio check", async () => {
    const { instance, volume } = first();
    sql('UPDATE volumes SET host_id = ? WHERE id = ?', otherHost(instance.hostId), volume.volumeId);
    sql('UPDATE hosts SET vcpu = 1 WHERE id = ?', instance.hostId);
    const violations = await check([]);
    expect(violations).toContainEqual({
      kind: 'inventory',
      subject: volume.volumeId,
      message: `volume ${volume.volumeId} is on ${otherHost(instance.hostId)} but its instance ${instance.instanceId} is on ${instance.hostId}`,
    });
    // Once, from the check that knows the host's oversubscription ratio, not the inventory's.
    expect(violations.filter((v) => v.subject === instance.hostId && /capacity/.test(v.message))).toEqual([
      expect.objectContaining({ kind: 'over-capacity' }),
    ]);
  });

  test('an instance running on two hosts is reported', async () => {
    const { instance } = first();
    const other = otherHost(instance.hostId);
    const dir = path.join(store(other).root, 'instances');
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(
      path.join(store(instance.hostId).root, 'instances', `${instance.instanceId}.json`),
      path.join(dir, `${instance.instanceId}.json`),
    );
    const violations = await check([]);
    expect(violations).toContainEqual(
      expect.objectContaining({
        kind: 'instance-placement',
        subject: instance.instanceId,
        message: expect.stringContaining(`runs on 2 hosts`),
      }),
    );
  });

  test('a migration in flight owns its target replica and reservation only while its workflow runs', async () => {
    const { instance, volume } = first();
    const target = otherHost(instance.hostId);
    inventory.reserve({
      key: 'migrate-1',
      hostId: target,
      instanceId: instance.instanceId,
      resources: instance.shape,
    });
    const runtime = new FleetRuntime({ dataDir });
    try {
      const agent = await runtime.host(target);
      await agent.prepareTarget('migrate-1', instance.hostId, {
        instanceId: instance.instanceId,
        account: instance.account,
        volumes: [
          {
            volumeId: volume.volumeId,
            sizeBytes: volume.sizeBytes,
            blockSize: volume.blockSize,
            userData: false,
          },
        ],
        workload: instance.workload,
      });
    } finally {
      await runtime.close();
    }
    expect(await check(['migrate-1'])).toEqual([]);
    expect(await check()).toEqual([]);
    expect(kinds(await check([]))).toEqual([
      'orphan-instance-record',
      'orphan-replica',
      'orphan-reservation',
    ]);
  });
});

/** The first instance of the layout with its volume (a lazy getter: the layout is made in beforeEach). */
function firstInstanceOf(get: () => FleetLayout) {
  return () => {
    const layout = get();
    const instance = layout.instances[0];
    const volume = layout.volumes.find((v) => v.instanceId === instance.instanceId)!;
    return { instance, volume };
  };
}
