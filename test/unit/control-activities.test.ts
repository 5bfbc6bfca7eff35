import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createControlActivities, type ControlActivities } from '../../src/activities/control-activities';
import { DEFAULT_BLOCK_SIZE, DEFAULT_WORKLOAD, ErrorType, MiB, type FleetSpec } from '../../src/contracts';
import { openInventory, type Inventory } from '../../src/fleet/inventory';
import { FileObjectStore } from '../../src/fleet/object-store';
import { SnapshotStore } from '../../src/fleet/snapshot-store';
import { expectFailure } from '../helpers/failures';

const spec: FleetSpec = { hosts: 3, instances: 4, volumeSizeBytes: 64 * MiB };
const shape = { vcpu: 2, memoryMiB: 4096, diskBytes: 64 * MiB };

type BadCase = [string, (a: ControlActivities) => Promise<unknown>, ErrorType, RegExp | string];

/** A plan for importing `file` into `instanceId`, for cases that must be refused. */
const planImport =
  (file: string, instanceId = 'i-1') =>
  (a: ControlActivities) =>
    a.planVolumeImport({ key: 'import-bad', instanceId, path: file, workloadWrites: false });

describe('control activities', () => {
  let dir: string;
  let inventory: Inventory;
  let snapshots: SnapshotStore;
  let activities: ControlActivities;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-control-'));
    inventory = openInventory(path.join(dir, 'data'));
    snapshots = new SnapshotStore(new FileObjectStore(path.join(dir, 'data', 'object-store')));
    activities = createControlActivities(inventory, snapshots);
    await activities.createFleet({ key: 'init-1', spec });
    // i-4 stays pending: it is the "not running" instance below.
    await activities.markInstancesRunning({ instanceIds: ['i-1', 'i-2', 'i-3'] });
  });

  afterEach(async () => {
    await snapshots.close();
    inventory.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function writeImage(name: string, size: number): string {
    const file = path.join(dir, name);
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, size);
    return file;
  }

  /** Runs a bad request and checks it fails as expected without changing the inventory. */
  async function expectRefused([, run, type, message]: BadCase): Promise<void> {
    const before = inventory.snapshot();
    await expectFailure(() => run(activities), type, message);
    expect(inventory.snapshot()).toEqual(before);
  }

  describe('planMigration', () => {
    test('returns the instance, its hosts, shape, volumes and workload', async () => {
      const plan = await activities.planMigration({ instanceId: 'i-1', targetHostId: 'h-2' });
      expect(plan).toEqual({
        instanceId: 'i-1',
        account: 'acct-1',
        sourceHostId: 'h-1',
        targetHostId: 'h-2',
        resources: shape,
        volumes: [
          {
            volumeId: 'i-1-v0',
            instanceId: 'i-1',
            hostId: 'h-1',
            sizeBytes: 64 * MiB,
            blockSize: DEFAULT_BLOCK_SIZE,
            kind: 'instance-store',
            userData: false,
          },
        ],
        workload: DEFAULT_WORKLOAD,
      });
    });

    const bad: BadCase[] = [
      [
        'a path-like instance id',
        (a) => a.planMigration({ instanceId: '../x', targetHostId: 'h-2' }),
        ErrorType.InvalidInput,
        /instanceId "\.\.\/x" is not a valid id/,
      ],
      [
        'a malformed target id',
        (a) => a.planMigration({ instanceId: 'i-1', targetHostId: 'H_2' }),
        ErrorType.InvalidInput,
        /targetHostId "H_2" is not a valid id/,
      ],
      [
        'an unknown instance',
        (a) => a.planMigration({ instanceId: 'i-9', targetHostId: 'h-2' }),
        ErrorType.NotFound,
        /instance i-9 not found: `rehome fleet list`/,
      ],
      [
        'an unknown host',
        (a) => a.planMigration({ instanceId: 'i-1', targetHostId: 'h-9' }),
        ErrorType.NotFound,
        /host h-9 not found: `rehome fleet list`/,
      ],
      [
        'target = source',
        (a) => a.planMigration({ instanceId: 'i-1', targetHostId: 'h-1' }),
        ErrorType.InvalidInput,
        /i-1 already runs on h-1: choose another target/,
      ],
      [
        'an instance not running',
        (a) => a.planMigration({ instanceId: 'i-4', targetHostId: 'h-2' }),
        ErrorType.InvalidState,
        /instance i-4 is pending, not running/,
      ],
      [
        'a negative bandwidth',
        (a) => a.planMigration({ instanceId: 'i-1', targetHostId: 'h-2', bandwidthBytesPerSec: -1 }),
        ErrorType.InvalidInput,
        /bandwidth -1 is not valid: give whole bytes per second >= 0/,
      ],
      [
        'a fractional bandwidth',
        (a) => a.planMigration({ instanceId: 'i-1', targetHostId: 'h-2', bandwidthBytesPerSec: 1.5 }),
        ErrorType.InvalidInput,
        /bandwidth 1\.5 is not valid/,
      ],
      [
        'an infinite bandwidth',
        (a) => a.planMigration({ instanceId: 'i-1', targetHostId: 'h-2', bandwidthBytesPerSec: Infinity }),
        ErrorType.InvalidInput,
        /bandwidth Infinity/,
      ],
      [
        'a NaN bandwidth',
        (a) => a.planMigration({ instanceId: 'i-1', targetHostId: 'h-2', bandwidthBytesPerSec: NaN }),
        ErrorType.InvalidInput,
        /bandwidth NaN/,
      ],
    ];
    test.each(bad)('refuses %s and changes nothing', (...badCase) => expectRefused(badCase));
  });

  describe('capacity', () => {
    test('reserve, release and commit a migration, each idempotent', async () => {
      const input = { key: 'wf-1', hostId: 'h-2', instanceId: 'i-1', resources: shape };
      const reservation = await activities.reserveCapacity(input);
      expect(await activities.reserveCapacity(input)).toEqual(reservation);
      expect(inventory.listReservations()).toHaveLength(1);

      const commit = { key: 'wf-1', instanceId: 'i-1', sourceHostId: 'h-1', targetHostId: 'h-2' };
      await activities.commitMigration(commit);
      await activities.commitMigration(commit);
      expect(inventory.getInstance('i-1')!.hostId).toBe('h-2');
      expect(inventory.getVolume('i-1-v0')!.hostId).toBe('h-2');
      expect(inventory.listReservations()).toEqual([]);

      await activities.reserveCapacity({ ...input, key: 'wf-2' });
      await activities.releaseReservation({ key: 'wf-2' });
      await activities.releaseReservation({ key: 'wf-2' });
      expect(inventory.listReservations()).toEqual([]);
      expect(inventory.checkConsistency()).toEqual([]);
    });

    const bad: BadCase[] = [
      [
        'a reservation on a malformed host',
        (a) => a.reserveCapacity({ key: 'wf-1', hostId: '../h', instanceId: 'i-1', resources: shape }),
        ErrorType.InvalidInput,
        /hostId "\.\.\/h" is not a valid id/,
      ],
      [
        'a reservation for a malformed instance',
        (a) => a.reserveCapacity({ key: 'wf-1', hostId: 'h-2', instanceId: 'I 1', resources: shape }),
        ErrorType.InvalidInput,
        /instanceId "I 1"/,
      ],
      [
        'a reservation on an unknown host',
        (a) => a.reserveCapacity({ key: 'wf-1', hostId: 'h-9', instanceId: 'i-1', resources: shape }),
        ErrorType.NotFound,
        /host h-9 not found/,
      ],
      [
        'a reservation without room',
        (a) =>
          a.reserveCapacity({
            key: 'wf-1',
            hostId: 'h-2',
            instanceId: 'i-1',
            resources: { ...shape, vcpu: 7 },
          }),
        ErrorType.NoCapacity,
        /host h-2 has 6 vCPU free, instance i-1 needs 7 vCPU: choose another target/,
      ],
      ['a release without a key', (a) => a.releaseReservation({ key: '' }), ErrorType.InvalidInput, /key/],
      [
        'a commit with a malformed source',
        (a) =>
          a.commitMigration({ key: 'wf-1', instanceId: 'i-1', sourceHostId: 'h/1', targetHostId: 'h-2' }),
        ErrorType.InvalidInput,
        /sourceHostId "h\/1"/,
      ],
      [
        'a commit for an instance on neither host',
        (a) =>
          a.commitMigration({ key: 'wf-1', instanceId: 'i-3', sourceHostId: 'h-1', targetHostId: 'h-2' }),
        ErrorType.InvalidState,
        /instance i-3 is on h-3, neither the source h-1 nor the target h-2/,
      ],
    ];
    test.each(bad)('refuses %s and changes nothing', (...badCase) => expectRefused(badCase));
  });

  describe('fleet', () => {
    test('createFleet is idempotent by key and refuses a second fleet', async () => {
      const layout = inventory.createFleet('init-1', spec);
      expect(await activities.createFleet({ key: 'init-1', spec })).toEqual(layout);
      await expectRefused([
        '',
        (a) => a.createFleet({ key: 'init-2', spec }),
        ErrorType.InvalidState,
        /a fleet already exists in .*data \(3 hosts\); use another --data-dir or delete it/,
      ]);
    });

    test('createFleet refuses a bad spec in an empty directory, recording nothing', async () => {
      const other = openInventory(path.join(dir, 'other'));
      try {
        const act = createControlActivities(other, snapshots);
        await expectFailure(
          () => act.createFleet({ key: 'init-1', spec: { ...spec, volumeSizeBytes: 1000 } }),
          ErrorType.InvalidInput,
          /use a whole number of MiB between 1 MiB and 16 TiB/,
        );
        expect(other.snapshot()).toEqual({
          hosts: [],
          instances: [],
          volumes: [],
          reservations: [],
          fleetInits: [],
        });
      } finally {
        other.close();
      }
    });

    const bad: BadCase[] = [
      [
        'markInstancesRunning with an unknown instance',
        (a) => a.markInstancesRunning({ instanceIds: ['i-4', 'i-9'] }),
        ErrorType.NotFound,
        /instance i-9 not found/,
      ],
      [
        'markInstancesRunning with a malformed id',
        (a) => a.markInstancesRunning({ instanceIds: ['i-4', '../i'] }),
        ErrorType.InvalidInput,
        /instanceIds\[1\] "\.\.\/i"/,
      ],
      [
        'markInstancesRunning without a list',
        (a) => a.markInstancesRunning({ instanceIds: 'i-4' as unknown as string[] }),
        ErrorType.InvalidInput,
        /must be a list/,
      ],
    ];
    test.each(bad)('refuses %s and changes nothing', (...badCase) => expectRefused(badCase));
  });

  describe('volumes', () => {
    test('plans, commits and describes an imported volume', async () => {
      const image = writeImage('disk.img', 3 * MiB + 512);
      const plan = await activities.planVolumeImport({
        key: 'import-1',
        instanceId: 'i-1',
        path: image,
        workloadWrites: false,
      });
      // The image's room is held from the plan on, so a concurrent import cannot take it.
      expect(inventory.getReservation('import-1')?.resources.diskBytes).toBe(3 * MiB + 512);
      expect(plan).toEqual({
        volumeId: 'i-1-v1',
        instanceId: 'i-1',
        hostId: 'h-1',
        sizeBytes: 3 * MiB + 512,
        blockSize: DEFAULT_BLOCK_SIZE,
        userData: true,
      });
      await activities.commitVolume({ ...plan, key: 'import-1' });
      expect(inventory.listReservations()).toEqual([]);
      const after = inventory.snapshot();
      await activities.commitVolume({ ...plan, key: 'import-1' });
      expect(inventory.snapshot()).toEqual(after);
      expect(await activities.describeVolume({ volumeId: 'i-1-v1' })).toEqual({
        ...plan,
        kind: 'instance-store',
      });
      expect(inventory.getInstance('i-1')!.shape.diskBytes).toBe(67 * MiB + 512);
      expect(inventory.checkConsistency()).toEqual([]);

      const next = await activities.planVolumeImport({
        key: 'import-2',
        instanceId: 'i-1',
        path: image,
        workloadWrites: true,
      });
      expect(next.volumeId).toBe('i-1-v2');
      expect(next.userData).toBe(false);
    });

    test('refuses a relative path and a path with a NUL character', async () => {
      await expectRefused([
        '',
        planImport('disk.img'),
        ErrorType.InvalidInput,
        /path "disk.img" is relative: give an absolute path/,
      ]);
      await expectRefused([
        '',
        planImport(`${dir}/disk\0.img`),
        ErrorType.InvalidInput,
        /path contains a NUL character/,
      ]);
    });

    test('refuses a missing file, a directory and an empty file', async () => {
      await expectRefused([
        '',
        (a) =>
          a.planVolumeImport({
            key: 'import-bad',
            instanceId: 'i-1',
            path: path.join(dir, 'nope.img'),
            workloadWrites: false,
          }),
        ErrorType.NotFound,
        /no file at .*nope\.img/,
      ]);
      await expectRefused(['', planImport(dir), ErrorType.InvalidInput, /is not a regular file/]);
      const empty = writeImage('empty.img', 0);
      await expectRefused(['', planImport(empty), ErrorType.InvalidInput, /is empty/]);
    });

    test('tells how to pad an image that is not a whole number of sectors', async () => {
      const odd = writeImage('odd.img', 1000);
      await expectRefused([
        '',
        planImport(odd),
        ErrorType.InvalidInput,
        `is 1000 bytes, not a multiple of 512: pad it with \`truncate -s 1024 ${odd}\``,
      ]);
    });

    test('two imports racing for the same disk room: the second is refused at its plan, before any copy', async () => {
      // h-1: 256 MiB of disk, 128 MiB used by i-1 and i-4; each image fits alone, both do not.
      const image = writeImage('half.img', 100 * MiB);
      await activities.planVolumeImport({
        key: 'import-a',
        instanceId: 'i-1',
        path: image,
        workloadWrites: false,
      });
      await expectRefused([
        '',
        (a) => a.planVolumeImport({ key: 'import-b', instanceId: 'i-1', path: image, workloadWrites: false }),
        ErrorType.NoCapacity,
        /host h-1 has 28 MiB of disk free, the image needs 100 MiB/,
      ]);
      // A retried plan of the first import keeps its one reservation.
      await activities.planVolumeImport({
        key: 'import-a',
        instanceId: 'i-1',
        path: image,
        workloadWrites: false,
      });
      expect(inventory.listReservations().map((r) => r.key)).toEqual(['import-a']);
    });

    test('refuses an image larger than the disk left on the host', async () => {
      // h-1: 256 MiB of disk, 128 MiB used by i-1 and i-4.
      const big = writeImage('big.img', 129 * MiB);
      await expectRefused([
        '',
        planImport(big),
        ErrorType.NoCapacity,
        /host h-1 has 128 MiB of disk free, the image needs 129 MiB/,
      ]);
    });

    test('refuses unknown, stopped and malformed instances', async () => {
      const image = writeImage('disk.img', MiB);
      await expectRefused(['', planImport(image, 'i-9'), ErrorType.NotFound, /instance i-9 not found/]);
      await expectRefused([
        '',
        planImport(image, 'i-4'),
        ErrorType.InvalidState,
        /instance i-4 is pending, not running/,
      ]);
      await expectRefused([
        '',
        planImport(image, '../i-1'),
        ErrorType.InvalidInput,
        /instanceId "\.\.\/i-1"/,
      ]);
    });

    const bad: BadCase[] = [
      [
        'a volume plan with a malformed id',
        (a) =>
          a.commitVolume({
            key: 'import-bad',
            volumeId: '../v',
            instanceId: 'i-1',
            hostId: 'h-1',
            sizeBytes: MiB,
            blockSize: DEFAULT_BLOCK_SIZE,
            userData: true,
          }),
        ErrorType.InvalidInput,
        /volumeId "\.\.\/v"/,
      ],
      [
        'a volume plan for the wrong host',
        (a) =>
          a.commitVolume({
            key: 'import-bad',
            volumeId: 'i-1-v1',
            instanceId: 'i-1',
            hostId: 'h-2',
            sizeBytes: MiB,
            blockSize: DEFAULT_BLOCK_SIZE,
            userData: true,
          }),
        ErrorType.InvalidState,
        /meant for h-2 but instance i-1 is on h-1/,
      ],
      [
        'describing an unknown volume',
        (a) => a.describeVolume({ volumeId: 'i-1-v7' }),
        ErrorType.NotFound,
        /volume i-1-v7 not found: `rehome fleet list` shows what exists/,
      ],
      [
        'describing a malformed volume',
        (a) => a.describeVolume({ volumeId: 'A' }),
        ErrorType.InvalidInput,
        /volumeId "A"/,
      ],
    ];
    test.each(bad)('refuses %s and changes nothing', (...badCase) => expectRefused(badCase));
  });

  describe('snapshots and restores', () => {
    /** Commits a snapshot of a whole volume of zeros: one chunk stored, whatever the size. */
    async function snapshot(snapshotId: string, volumeId: string, event: string, account = 'acct-1') {
      const volume = inventory.requireVolume(volumeId);
      const writer = await snapshots.openUpload({
        snapshotId,
        account,
        instanceId: volume.instanceId,
        volumeId,
        sizeBytes: volume.sizeBytes,
        blockSize: volume.blockSize,
        sourceEvent: event,
        createdAt: new Date(Date.UTC(2026, 10, 25, 12, Number(snapshotId.slice(-1)))).toISOString(),
      });
      await writer.putBlocks(0, Buffer.alloc(volume.sizeBytes));
      return writer.commit();
    }

    test('planSnapshot lists the instance-store volumes where the instance runs, and their snapshots', async () => {
      await snapshot('snap-p1', 'i-1-v0', 'manual');
      expect(await activities.planSnapshot({ instanceId: 'i-1', account: 'acct-1' })).toEqual({
        instanceId: 'i-1',
        account: 'acct-1',
        hostId: 'h-1',
        volumes: [
          {
            volumeId: 'i-1-v0',
            sizeBytes: 64 * MiB,
            blockSize: DEFAULT_BLOCK_SIZE,
            kind: 'instance-store',
            snapshotsHeld: 1,
          },
        ],
      });
    });

    test('planRestore places on another host and fills in the volumes snapshotted by the same event', async () => {
      inventory.addVolume({
        volumeId: 'i-1-v1',
        instanceId: 'i-1',
        hostId: 'h-1',
        sizeBytes: 2 * MiB,
        blockSize: DEFAULT_BLOCK_SIZE,
        kind: 'instance-store',
        userData: true,
      });
      await snapshot('snap-1', 'i-1-v0', 'migration:m-1');
      await snapshot('snap-2', 'i-1-v1', 'migration:m-1');
      await snapshot('snap-3', 'i-1-v1', 'manual');
      const plan = await activities.planRestore({
        account: 'acct-1',
        snapshotIds: ['snap-1'],
        avoidHostIds: ['h-2'],
      });
      expect(plan).toMatchObject({
        instanceId: 'i-1',
        fromHostId: 'h-1',
        hostId: 'h-3',
        resources: inventory.requireInstance('i-1').shape,
      });
      expect(plan.volumes.map((v) => [v.volumeId, v.snapshotId])).toEqual([
        ['i-1-v0', 'snap-1'],
        ['i-1-v1', 'snap-2'],
      ]);
      const named = await activities.planRestore({
        account: 'acct-1',
        snapshotIds: ['snap-1', 'snap-3'],
        targetHostId: 'h-2',
      });
      expect(named.hostId).toBe('h-2');
      expect(named.volumes.map((v) => v.snapshotId)).toEqual(['snap-1', 'snap-3']);
    });

    test("retainSnapshots keeps the newest; deleteSnapshot is the owner's and idempotent", async () => {
      for (const id of ['snap-1', 'snap-2', 'snap-3']) await snapshot(id, 'i-1-v0', 'manual');
      const retained = await activities.retainSnapshots({
        account: 'acct-1',
        volumeId: 'i-1-v0',
        keepLast: 2,
      });
      expect(retained.kept).toEqual(['snap-3', 'snap-2']);
      expect(retained.deleted).toEqual(['snap-1']);
      await expectFailure(
        () => activities.deleteSnapshot({ account: 'acct-2', snapshotId: 'snap-2' }),
        ErrorType.Forbidden,
        /does not belong to account acct-2/,
      );
      expect((await activities.deleteSnapshot({ account: 'acct-1', snapshotId: 'snap-2' })).deleted).toBe(
        true,
      );
      expect((await activities.deleteSnapshot({ account: 'acct-1', snapshotId: 'snap-2' })).deleted).toBe(
        false,
      );
      expect((await snapshots.list({ account: 'acct-1' })).map((s) => s.snapshotId)).toEqual(['snap-3']);
    });

    describe('refusals', () => {
      beforeEach(async () => {
        await snapshot('snap-1', 'i-1-v0', 'manual');
        await snapshot('snap-2', 'i-2-v0', 'manual', 'acct-2');
      });
      const bad: BadCase[] = [
        [
          "a snapshot of another account's instance",
          (a) => a.planSnapshot({ instanceId: 'i-1', account: 'acct-2' }),
          ErrorType.Forbidden,
          /i-1 does not belong to account acct-2/,
        ],
        [
          'a snapshot of a pending instance',
          (a) => a.planSnapshot({ instanceId: 'i-4' }),
          ErrorType.InvalidState,
          /i-4 is pending/,
        ],
        [
          'a snapshot of an unknown instance',
          (a) => a.planSnapshot({ instanceId: 'i-99' }),
          ErrorType.NotFound,
          /i-99/,
        ],
        [
          'a restore by the wrong account',
          (a) => a.planRestore({ account: 'acct-2', snapshotIds: ['snap-1'] }),
          ErrorType.Forbidden,
          /snap-1 does not belong to account acct-2/,
        ],
        [
          'a restore onto the host it runs on',
          (a) => a.planRestore({ account: 'acct-1', snapshotIds: ['snap-1'], targetHostId: 'h-1' }),
          ErrorType.InvalidInput,
          /choose another --host/,
        ],
        [
          'a restore onto an unknown host',
          (a) => a.planRestore({ account: 'acct-1', snapshotIds: ['snap-1'], targetHostId: 'h-9' }),
          ErrorType.NotFound,
          /h-9/,
        ],
        [
          'a restore from an unknown snapshot',
          (a) => a.planRestore({ account: 'acct-1', snapshotIds: ['snap-9'] }),
          ErrorType.NotFound,
          /snap-9/,
        ],
        [
          'a restore from a malformed id',
          (a) => a.planRestore({ account: 'acct-1', snapshotIds: ['../x'] }),
          ErrorType.InvalidInput,
          /snapshotIds\[0\]/,
        ],
        [
          'a restore with no snapshots',
          (a) => a.planRestore({ account: 'acct-1', snapshotIds: [] }),
          ErrorType.InvalidInput,
          /at least one snapshot/,
        ],
        [
          'a restore with every other host avoided',
          (a) => a.planRestore({ account: 'acct-1', snapshotIds: ['snap-1'], avoidHostIds: ['h-2', 'h-3'] }),
          ErrorType.NoCapacity,
          /no host other than h-1, h-2, h-3/,
        ],
        [
          "deleting another account's snapshot",
          (a) => a.deleteSnapshot({ account: 'acct-1', snapshotId: 'snap-2' }),
          ErrorType.Forbidden,
          /snap-2 does not belong to account acct-1/,
        ],
      ];
      test.each(bad)('refuses %s and changes nothing', async (...badCase) => {
        const before = await snapshots.list({ account: 'acct-1' });
        await expectRefused(badCase);
        expect(await snapshots.list({ account: 'acct-1' })).toEqual(before);
        expect(await snapshots.list({ account: 'acct-2' })).toHaveLength(1);
      });
    });
  });
});
