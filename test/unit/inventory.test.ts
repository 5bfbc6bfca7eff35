import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_WORKLOAD,
  ErrorType,
  GiB,
  MAX_VOLUME_BYTES,
  MiB,
  type FleetSpec,
  type VolumeRecord,
} from '../../src/contracts';
import { Inventory, openInventory } from '../../src/fleet/inventory';
import { expectFailureSync } from '../helpers/failures';

const smallFleet: FleetSpec = { hosts: 3, instances: 4, volumeSizeBytes: 64 * MiB };

describe('inventory', () => {
  let dataDir: string;
  let inventory: Inventory;

  beforeEach(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-inventory-'));
    inventory = openInventory(dataDir);
  });

  afterEach(() => {
    inventory.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  describe('schema', () => {
    test('creates inventory.db in WAL mode with foreign keys and every table', () => {
      expect(inventory.dbPath).toBe(path.join(dataDir, 'inventory.db'));
      expect(fs.existsSync(inventory.dbPath)).toBe(true);
      const raw = new Database(inventory.dbPath, { readonly: true });
      try {
        expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
        expect(raw.pragma('user_version', { simple: true })).toBe(1);
        const tables = (
          raw.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]
        )
          .map((t) => t.name)
          .sort();
        expect(tables).toEqual(['fleet_inits', 'hosts', 'instances', 'reservations', 'volumes']);
      } finally {
        raw.close();
      }
    });

    test('creates a missing data directory and keeps data across reopening', () => {
      const nested = path.join(dataDir, 'a', 'b');
      const first = openInventory(nested);
      first.createFleet('init-1', smallFleet);
      first.close();
      first.close(); // closing twice is harmless
      const second = openInventory(nested);
      try {
        expect(second.listHosts().map((h) => h.hostId)).toEqual(['h-1', 'h-2', 'h-3']);
        expect(second.listInstances()).toHaveLength(4);
      } finally {
        second.close();
      }
    });

    test('refuses a database from a newer schema', () => {
      inventory.close();
      const raw = new Database(path.join(dataDir, 'inventory.db'));
      raw.pragma('user_version = 99');
      raw.close();
      expectFailureSync(() => openInventory(dataDir), ErrorType.InvalidState, /newer rehome \(schema 99/);
    });
  });

  describe('createFleet', () => {
    test('lays out hosts, instances and volumes as documented', () => {
      const layout = inventory.createFleet('init-1', smallFleet);
      expect(layout.hosts.map((h) => [h.hostId, h.zone])).toEqual([
        ['h-1', 'zone-a'],
        ['h-2', 'zone-b'],
        ['h-3', 'zone-c'],
      ]);
      // Share of 4 instances over 3 hosts is 2: capacity for twice that.
      expect(layout.hosts[0].capacity).toEqual({ vcpu: 8, memoryMiB: 16384, diskBytes: 256 * MiB });
      expect(layout.instances.map((i) => [i.instanceId, i.hostId, i.account, i.state])).toEqual([
        ['i-1', 'h-1', 'acct-1', 'pending'],
        ['i-2', 'h-2', 'acct-2', 'pending'],
        ['i-3', 'h-3', 'acct-1', 'pending'],
        ['i-4', 'h-1', 'acct-2', 'pending'],
      ]);
      expect(layout.instances[0].shape).toEqual({ vcpu: 2, memoryMiB: 4096, diskBytes: 64 * MiB });
      expect(layout.instances[0].workload).toEqual(DEFAULT_WORKLOAD);
      expect(layout.volumes[3]).toEqual({
        volumeId: 'i-4-v0',
        instanceId: 'i-4',
        hostId: 'h-1',
        sizeBytes: 64 * MiB,
        blockSize: DEFAULT_BLOCK_SIZE,
        kind: 'instance-store',
        userData: false,
      });
      // What was returned is what is stored.
      expect(inventory.listHosts()).toEqual(layout.hosts);
      expect(inventory.listInstances()).toEqual(layout.instances);
      expect(inventory.listVolumes()).toEqual(layout.volumes);
      expect(inventory.getInstance('i-2')).toEqual(layout.instances[1]);
      expect(inventory.getHost('h-3')).toEqual(layout.hosts[2]);
      expect(inventory.getVolume('i-1-v0')).toEqual(layout.volumes[0]);
      expect(inventory.getInstance('i-9')).toBeUndefined();
      expect(inventory.getHost('h-9')).toBeUndefined();
      expect(inventory.getVolume('i-9-v0')).toBeUndefined();
      expect(inventory.listInstances({ hostId: 'h-1' }).map((i) => i.instanceId)).toEqual(['i-1', 'i-4']);
      expect(inventory.listInstances({ account: 'acct-2' }).map((i) => i.instanceId)).toEqual(['i-2', 'i-4']);
      expect(inventory.listVolumes({ hostId: 'h-1' }).map((v) => v.volumeId)).toEqual(['i-1-v0', 'i-4-v0']);
      expect(inventory.listVolumes({ instanceId: 'i-3' }).map((v) => v.volumeId)).toEqual(['i-3-v0']);
      expect(inventory.hostUsage('h-1')).toEqual({
        capacity: { vcpu: 8, memoryMiB: 16384, diskBytes: 256 * MiB },
        used: { vcpu: 4, memoryMiB: 8192, diskBytes: 128 * MiB },
        free: { vcpu: 4, memoryMiB: 8192, diskBytes: 128 * MiB },
      });
      expect(inventory.checkConsistency()).toEqual([]);
    });

    test('honours accounts, shape, capacity and workload from the spec, and lists ids in natural order', () => {
      inventory.createFleet('init-1', {
        hosts: 12,
        instances: 12,
        volumeSizeBytes: MiB,
        accounts: ['team-x'],
        instanceShape: { vcpu: 1, memoryMiB: 512 },
        hostCapacity: { vcpu: 4, memoryMiB: 2048, diskBytes: GiB },
        workload: { writeBytesPerSec: 0, writeSize: 512 },
      });
      expect(inventory.listHosts().map((h) => h.hostId)).toEqual(
        Array.from({ length: 12 }, (_, n) => `h-${n + 1}`),
      );
      const i11 = inventory.getInstance('i-11')!;
      expect(i11).toMatchObject({
        account: 'team-x',
        hostId: 'h-11',
        shape: { vcpu: 1, memoryMiB: 512, diskBytes: MiB },
        workload: { writeBytesPerSec: 0, writeSize: 512 },
      });
      expect(inventory.getHost('h-12')!.capacity).toEqual({ vcpu: 4, memoryMiB: 2048, diskBytes: GiB });
    });

    test('is idempotent by key, and refuses a second fleet in the same directory', () => {
      const layout = inventory.createFleet('init-1', smallFleet);
      const before = inventory.snapshot();
      expect(inventory.createFleet('init-1', smallFleet)).toEqual(layout);
      expect(inventory.snapshot()).toEqual(before);
      expectFailureSync(
        () => inventory.createFleet('init-2', { ...smallFleet, hosts: 1 }),
        ErrorType.InvalidState,
        `a fleet already exists in ${dataDir} (3 hosts); use another --data-dir or delete it`,
      );
      expect(inventory.snapshot()).toEqual(before);
    });

    test('a fleet with no instances is allowed', () => {
      const layout = inventory.createFleet('init-1', { hosts: 2, instances: 0, volumeSizeBytes: MiB });
      expect(layout.instances).toEqual([]);
      expect(layout.hosts[0].capacity).toEqual({ vcpu: 4, memoryMiB: 8192, diskBytes: 2 * MiB });
    });

    const badSpecs: [string, FleetSpec, ErrorType, RegExp][] = [
      [
        'no hosts',
        { ...smallFleet, hosts: 0 },
        ErrorType.InvalidInput,
        /hosts 0 is out of range.*from 1 to 256/,
      ],
      ['too many hosts', { ...smallFleet, hosts: 257 }, ErrorType.InvalidInput, /from 1 to 256/],
      [
        'fractional hosts',
        { ...smallFleet, hosts: 1.5 },
        ErrorType.InvalidInput,
        /whole number from 1 to 256/,
      ],
      ['negative instances', { ...smallFleet, instances: -1 }, ErrorType.InvalidInput, /from 0 to 4096/],
      ['too many instances', { ...smallFleet, instances: 4097 }, ErrorType.InvalidInput, /from 0 to 4096/],
      [
        'zero volume',
        { ...smallFleet, volumeSizeBytes: 0 },
        ErrorType.InvalidInput,
        /between 1 MiB and 16 TiB/,
      ],
      [
        'volume not MiB',
        { ...smallFleet, volumeSizeBytes: MiB + 512 },
        ErrorType.InvalidInput,
        /whole number of MiB/,
      ],
      [
        'volume too big',
        { ...smallFleet, volumeSizeBytes: MAX_VOLUME_BYTES + MiB },
        ErrorType.InvalidInput,
        /between 1 MiB and 16 TiB/,
      ],
      [
        'bad account',
        { ...smallFleet, accounts: ['../x'] },
        ErrorType.InvalidInput,
        /accounts\[0\] "\.\.\/x" is not a valid id/,
      ],
      [
        'no accounts',
        { ...smallFleet, accounts: [] },
        ErrorType.InvalidInput,
        /list of 1 to 4096 account ids/,
      ],
      [
        'bad write size',
        { ...smallFleet, workload: { writeBytesPerSec: 1, writeSize: 100 } },
        ErrorType.InvalidInput,
        /writeSize 100.*multiple of 512/,
      ],
      [
        'write size over 1 MiB',
        { ...smallFleet, workload: { writeBytesPerSec: 1, writeSize: 2 * MiB } },
        ErrorType.InvalidInput,
        /writeSize 2097152 is not allowed: use a multiple of 512 from 512 to 1048576/,
      ],
      [
        'fractional rate',
        { ...smallFleet, workload: { writeBytesPerSec: 1.5, writeSize: 4096 } },
        ErrorType.InvalidInput,
        /writeBytesPerSec 1\.5 is not allowed: use whole bytes per second/,
      ],
      [
        'negative rate',
        { ...smallFleet, workload: { writeBytesPerSec: -1, writeSize: 4096 } },
        ErrorType.InvalidInput,
        /writeBytesPerSec -1/,
      ],
      [
        'bad shape',
        { ...smallFleet, instanceShape: { vcpu: 0, memoryMiB: 1 } },
        ErrorType.InvalidInput,
        /instanceShape\.vcpu 0/,
      ],
      [
        'negative capacity',
        { ...smallFleet, hostCapacity: { vcpu: -1, memoryMiB: 1, diskBytes: 1 } },
        ErrorType.InvalidInput,
        /hostCapacity\.vcpu -1/,
      ],
      [
        'hosts too small',
        { ...smallFleet, hostCapacity: { vcpu: 2, memoryMiB: 65536, diskBytes: GiB } },
        ErrorType.NoCapacity,
        /instance i-4 .* fits on none of the 3 host/,
      ],
    ];
    test.each(badSpecs)('rejects %s and records nothing', (_name, spec, type, message) => {
      const before = inventory.snapshot();
      expectFailureSync(() => inventory.createFleet('init-1', spec), type, message);
      expect(inventory.snapshot()).toEqual(before);
      expect(inventory.listHosts()).toEqual([]);
    });
  });

  describe('reservations', () => {
    beforeEach(() => {
      inventory.createFleet('init-1', smallFleet);
    });

    const shape = { vcpu: 2, memoryMiB: 4096, diskBytes: 64 * MiB };

    test('the same key reserves once', () => {
      const first = inventory.reserve({ key: 'wf-1', hostId: 'h-2', instanceId: 'i-1', resources: shape });
      const second = inventory.reserve({ key: 'wf-1', hostId: 'h-2', instanceId: 'i-1', resources: shape });
      expect(second).toEqual(first);
      expect(inventory.listReservations()).toEqual([first]);
      expect(inventory.getReservation('wf-1')).toEqual(first);
      // h-2 holds i-2 (2 vCPU) plus one reservation (2 vCPU): counted once.
      expect(inventory.hostUsage('h-2').used).toEqual({ vcpu: 4, memoryMiB: 8192, diskBytes: 128 * MiB });
    });

    test('the same key on another host is refused', () => {
      inventory.reserve({ key: 'wf-1', hostId: 'h-2', instanceId: 'i-1', resources: shape });
      const before = inventory.snapshot();
      expectFailureSync(
        () => inventory.reserve({ key: 'wf-1', hostId: 'h-3', instanceId: 'i-1', resources: shape }),
        ErrorType.InvalidInput,
        /reservation wf-1 already holds h-2 for instance i-1/,
      );
      expect(inventory.snapshot()).toEqual(before);
    });

    test('no capacity names the host, the short dimension, what is free and what is asked', () => {
      inventory.reserve({ key: 'wf-1', hostId: 'h-2', instanceId: 'i-1', resources: shape });
      const before = inventory.snapshot();
      // h-2: 8 vCPU, 4 used -> 4 free; ask 6.
      expectFailureSync(
        () =>
          inventory.reserve({
            key: 'wf-2',
            hostId: 'h-2',
            instanceId: 'i-3',
            resources: { ...shape, vcpu: 6 },
          }),
        ErrorType.NoCapacity,
        'host h-2 has 4 vCPU free, instance i-3 needs 6 vCPU: choose another target',
      );
      const failure = expectFailureSync(
        () =>
          inventory.reserve({
            key: 'wf-2',
            hostId: 'h-2',
            instanceId: 'i-3',
            resources: { vcpu: 1, memoryMiB: 1, diskBytes: 200 * MiB },
          }),
        ErrorType.NoCapacity,
      );
      expect(failure.message).toContain('has 128 MiB of disk free, instance i-3 needs 200 MiB of disk');
      expect(inventory.snapshot()).toEqual(before);
    });

    test('a reservation that exactly fills the host is allowed', () => {
      inventory.reserve({
        key: 'wf-1',
        hostId: 'h-2',
        instanceId: 'i-1',
        resources: { vcpu: 6, memoryMiB: 0, diskBytes: 0 },
      });
      expect(inventory.hostUsage('h-2').free.vcpu).toBe(0);
    });

    test('unknown host and malformed requests are refused', () => {
      const before = inventory.snapshot();
      expectFailureSync(
        () => inventory.reserve({ key: 'wf-1', hostId: 'h-9', instanceId: 'i-1', resources: shape }),
        ErrorType.NotFound,
        /host h-9 not found: `rehome fleet list`/,
      );
      expectFailureSync(
        () => inventory.reserve({ key: '', hostId: 'h-1', instanceId: 'i-1', resources: shape }),
        ErrorType.InvalidInput,
        /non-empty string/,
      );
      expectFailureSync(
        () =>
          inventory.reserve({
            key: 'wf-1',
            hostId: 'h-1',
            instanceId: 'i-1',
            resources: { ...shape, vcpu: -2 },
          }),
        ErrorType.InvalidInput,
        /resources\.vcpu -2/,
      );
      expectFailureSync(() => inventory.hostUsage('h-9'), ErrorType.NotFound, /host h-9/);
      expect(inventory.snapshot()).toEqual(before);
    });

    test('release is idempotent and frees the room', () => {
      inventory.reserve({ key: 'wf-1', hostId: 'h-2', instanceId: 'i-1', resources: shape });
      expect(inventory.release('wf-1')).toBe(true);
      expect(inventory.release('wf-1')).toBe(false);
      expect(inventory.listReservations()).toEqual([]);
      expect(inventory.hostUsage('h-2').used.vcpu).toBe(2);
    });
  });

  describe('placedElsewhere', () => {
    beforeEach(() => {
      inventory.createFleet('init-1', smallFleet);
    });

    test('names the host an instance is placed on, unless it is this one or a reservation moves it here', () => {
      const placed = inventory.getInstance('i-1')!.hostId;
      const other = inventory.listHosts().find((h) => h.hostId !== placed)!.hostId;
      expect(inventory.placedElsewhere('i-1', placed)).toBeUndefined();
      expect(inventory.placedElsewhere('i-1', other)).toBe(placed);
      expect(inventory.placedElsewhere('i-404', other)).toBeUndefined();
      const shape = { vcpu: 2, memoryMiB: 4096, diskBytes: 64 * MiB };
      inventory.reserve({ key: 'restore-1', hostId: other, instanceId: 'i-1', resources: shape });
      expect(inventory.placedElsewhere('i-1', other)).toBeUndefined();
    });
  });

  describe('commitMigration', () => {
    const shape = { vcpu: 2, memoryMiB: 4096, diskBytes: 64 * MiB };
    const commit = { key: 'wf-1', instanceId: 'i-1', sourceHostId: 'h-1', targetHostId: 'h-2' };

    beforeEach(() => {
      inventory.createFleet('init-1', smallFleet);
    });

    test('moves the instance and its volumes, drops the reservation, and is idempotent', () => {
      inventory.addVolume({
        volumeId: 'i-1-v1',
        instanceId: 'i-1',
        hostId: 'h-1',
        sizeBytes: MiB,
        blockSize: DEFAULT_BLOCK_SIZE,
        kind: 'instance-store',
        userData: true,
      });
      inventory.reserve({ key: 'wf-1', hostId: 'h-2', instanceId: 'i-1', resources: shape });
      inventory.commitMigration(commit);
      expect(inventory.getInstance('i-1')!.hostId).toBe('h-2');
      expect(inventory.listVolumes({ instanceId: 'i-1' }).map((v) => v.hostId)).toEqual(['h-2', 'h-2']);
      expect(inventory.listReservations()).toEqual([]);
      expect(inventory.hostUsage('h-1').used.vcpu).toBe(2);
      expect(inventory.hostUsage('h-2').used.vcpu).toBe(4);
      expect(inventory.checkConsistency()).toEqual([]);
      const after = inventory.snapshot();
      inventory.commitMigration(commit);
      expect(inventory.snapshot()).toEqual(after);
    });

    test('refuses an instance on neither host and changes nothing', () => {
      inventory.reserve({ key: 'wf-1', hostId: 'h-2', instanceId: 'i-3', resources: shape });
      const before = inventory.snapshot();
      expectFailureSync(
        () => inventory.commitMigration({ ...commit, instanceId: 'i-3' }),
        ErrorType.InvalidState,
        /instance i-3 is on h-3, neither the source h-1 nor the target h-2/,
      );
      expectFailureSync(
        () => inventory.commitMigration({ ...commit, instanceId: 'i-9' }),
        ErrorType.NotFound,
        /i-9/,
      );
      expect(inventory.snapshot()).toEqual(before);
    });

    test('refuses a reservation made for something else', () => {
      inventory.reserve({ key: 'wf-1', hostId: 'h-3', instanceId: 'i-1', resources: shape });
      const before = inventory.snapshot();
      expectFailureSync(
        () => inventory.commitMigration(commit),
        ErrorType.InvalidInput,
        /holds h-3 for instance i-1/,
      );
      expect(inventory.snapshot()).toEqual(before);
    });

    test('without a reservation it moves only if the target still has room', () => {
      inventory.reserve({ key: 'other', hostId: 'h-2', instanceId: 'i-3', resources: { ...shape, vcpu: 6 } });
      const before = inventory.snapshot();
      expectFailureSync(
        () => inventory.commitMigration(commit),
        ErrorType.NoCapacity,
        /h-2 no longer has room/,
      );
      expect(inventory.snapshot()).toEqual(before);
      inventory.release('other');
      inventory.commitMigration(commit);
      expect(inventory.getInstance('i-1')!.hostId).toBe('h-2');
    });
  });

  describe('instances and volumes', () => {
    beforeEach(() => {
      inventory.createFleet('init-1', smallFleet);
    });

    const volume: VolumeRecord = {
      volumeId: 'i-2-v1',
      instanceId: 'i-2',
      hostId: 'h-2',
      sizeBytes: 8 * MiB,
      blockSize: DEFAULT_BLOCK_SIZE,
      kind: 'instance-store',
      userData: true,
    };

    test('markInstancesRunning is all or nothing', () => {
      const before = inventory.snapshot();
      expectFailureSync(
        () => inventory.markInstancesRunning(['i-1', 'i-9']),
        ErrorType.NotFound,
        /instance i-9 not found/,
      );
      expect(inventory.snapshot()).toEqual(before);
      inventory.markInstancesRunning(['i-1', 'i-2']);
      inventory.markInstancesRunning(['i-1']);
      expect(inventory.listInstances().map((i) => i.state)).toEqual([
        'running',
        'running',
        'pending',
        'pending',
      ]);
      inventory.setInstanceState('i-1', 'stopped');
      expect(inventory.getInstance('i-1')!.state).toBe('stopped');
      expectFailureSync(
        () => inventory.setInstanceState('i-1', 'gone' as 'stopped'),
        ErrorType.InvalidInput,
        /not one of/,
      );
    });

    test('addVolume is idempotent and counts the volume in the instance shape', () => {
      expect(inventory.addVolume(volume)).toBe(true);
      const after = inventory.snapshot();
      expect(inventory.addVolume({ ...volume })).toBe(false);
      expect(inventory.snapshot()).toEqual(after);
      expect(inventory.getVolume('i-2-v1')).toEqual(volume);
      expect(inventory.getInstance('i-2')!.shape.diskBytes).toBe(72 * MiB);
      expect(inventory.hostUsage('h-2').used.diskBytes).toBe(72 * MiB);
      expect(inventory.checkConsistency()).toEqual([]);
    });

    test('addVolume refuses conflicts, wrong hosts and no room, changing nothing', () => {
      inventory.addVolume(volume);
      const before = inventory.snapshot();
      expectFailureSync(
        () => inventory.addVolume({ ...volume, sizeBytes: 4 * MiB }),
        ErrorType.InvalidState,
        /volume i-2-v1 already exists with different settings/,
      );
      expectFailureSync(
        () => inventory.addVolume({ ...volume, volumeId: 'i-2-v2', hostId: 'h-1' }),
        ErrorType.InvalidState,
        /meant for h-1 but instance i-2 is on h-2/,
      );
      expectFailureSync(
        () => inventory.addVolume({ ...volume, volumeId: 'i-2-v2', sizeBytes: 200 * MiB }),
        ErrorType.NoCapacity,
        /host h-2 has 184 MiB of disk free, volume i-2-v2 needs 200 MiB of disk/,
      );
      expectFailureSync(
        () => inventory.addVolume({ ...volume, volumeId: '../x' }),
        ErrorType.InvalidInput,
        /volumeId/,
      );
      expectFailureSync(
        () => inventory.addVolume({ ...volume, volumeId: 'i-2-v2', sizeBytes: 1000 }),
        ErrorType.InvalidInput,
        /multiple of 512/,
      );
      expectFailureSync(
        () => inventory.addVolume({ ...volume, volumeId: 'i-2-v2', instanceId: 'i-9' }),
        ErrorType.NotFound,
        /instance i-9/,
      );
      expect(inventory.snapshot()).toEqual(before);
    });

    test('checkConsistency and problems() report broken invariants', () => {
      inventory.reserve({
        key: 'ghost',
        hostId: 'h-1',
        instanceId: 'i-77',
        resources: { vcpu: 0, memoryMiB: 0, diskBytes: 0 },
      });
      const raw = new Database(inventory.dbPath);
      try {
        raw.prepare("UPDATE volumes SET host_id = 'h-3' WHERE id = 'i-1-v0'").run();
        raw.prepare("UPDATE hosts SET vcpu = 1 WHERE id = 'h-2'").run();
        raw.prepare("UPDATE instances SET disk_bytes = 0 WHERE id = 'i-4'").run();
      } finally {
        raw.close();
      }
      expect(inventory.checkConsistency()).toEqual([
        'volume i-1-v0 is on h-3 but its instance i-1 is on h-1',
        'instance i-4 counts 0 bytes of disk but its volumes hold 64 MiB',
        'reservation ghost is for instance i-77, which does not exist',
        'host h-2 is over capacity: 2 vCPU used of 1 vCPU',
      ]);
      // The same problems, each with what it is about, for callers that sort them.
      expect(inventory.problems().map(({ kind, subject }) => `${kind} ${subject}`)).toEqual([
        'volume-placement i-1-v0',
        'disk-accounting i-4',
        'reservation-for-unknown-instance ghost',
        'over-capacity h-2',
      ]);
    });
  });

  describe('concurrency', () => {
    const children = 4;
    const attemptsEach = 60;
    const capacityVcpu = 150;

    function startChild(prefix: string) {
      const child = spawn(
        process.execPath,
        [
          '-r',
          'ts-node/register/transpile-only',
          path.join(__dirname, '..', 'helpers', 'reserve-child.ts'),
          dataDir,
          'h-1',
          prefix,
          String(attemptsEach),
          '1',
        ],
        { stdio: ['pipe', 'pipe', 'pipe'], cwd: path.join(__dirname, '..', '..') },
      );
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const ready = new Promise<void>((resolve, reject) => {
        const check = () => (out.includes('ready\n') ? resolve() : undefined);
        child.stdout.on('data', check);
        child.once('exit', (code) => reject(new Error(`child ${prefix} exited early (${code}): ${err}`)));
      });
      const done = new Promise<{ reserved: string[]; noCapacity: number; errors: string[] }>(
        (resolve, reject) => {
          child.once('exit', (code) => {
            if (code !== 0) return reject(new Error(`child ${prefix} exited with ${code}: ${err}`));
            resolve(JSON.parse(out.split('\n').filter(Boolean).pop()!));
          });
        },
      );
      return { child, ready, done };
    }

    test('processes racing for one host never overcommit it', async () => {
      inventory.createFleet('init-1', {
        hosts: 1,
        instances: 0,
        volumeSizeBytes: MiB,
        hostCapacity: { vcpu: capacityVcpu, memoryMiB: 1 << 20, diskBytes: GiB },
      });
      const racers = Array.from({ length: children }, (_, n) => startChild(`c${n}`));
      await Promise.all(racers.map((r) => r.ready));
      for (const r of racers) r.child.stdin.end('go\n');
      const results = await Promise.all(racers.map((r) => r.done));

      const errors = results.flatMap((r) => r.errors);
      expect(errors).toEqual([]);
      const reserved = results.flatMap((r) => r.reserved);
      expect(reserved).toHaveLength(capacityVcpu);
      expect(results.reduce((n, r) => n + r.noCapacity, 0)).toBe(children * attemptsEach - capacityVcpu);
      const rows = inventory.listReservations();
      expect(rows.map((r) => r.key).sort()).toEqual([...reserved].sort());
      expect(rows.reduce((n, r) => n + r.resources.vcpu, 0)).toBe(capacityVcpu);
      expect(inventory.hostUsage('h-1').free.vcpu).toBe(0);
      expect(inventory.checkConsistency().filter((p) => p.includes('over capacity'))).toEqual([]);
    });
  });
});
