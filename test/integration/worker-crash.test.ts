import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MiB, type FleetLayout } from '../../src/contracts';
import { openInventory, type Inventory } from '../../src/fleet/inventory';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import { WorkloadLog, writeSeed } from '../../src/fleet/workload-log';
import { checkImages, runCrashMigrations, type CrashFigures } from '../helpers/crash-driver';

// Issue 4, part 2 at a small N: live migrations of writing instances while host-agent worker
// processes are SIGKILLed (aimed at the switch, at the sync, and anywhere) and restarted. The bench
// (`npm run bench:faults`) runs the same driver with N >= 20.
describe('worker crash: host agents killed with SIGKILL during live migrations', () => {
  let figures: CrashFigures;

  beforeAll(async () => {
    figures = await runCrashMigrations({
      migrations: 5,
      kills: 3,
      seed: 4242,
      hostPairs: 2,
      volumeSizeBytes: 16 * 1024 * 1024,
      bandwidthBytesPerSec: 4 * 1024 * 1024,
      log: process.env.REHOME_CRASH_LOG ? (line) => console.log(line) : undefined,
    });
  }, 300_000);

  it('kills host processes while migrations run, mid-switch and mid-sync among them', () => {
    expect(figures.kills).toBeGreaterThanOrEqual(2);
    const aimed = figures.killEvents.filter((e) => e.phase === 'syncing' || e.phase === 'switching');
    expect(aimed.length).toBeGreaterThanOrEqual(1);
  });

  it('completes every migration', () => {
    expect(figures.failures).toEqual([]);
    expect(figures.completed).toBe(5);
    expect(figures.migrations).toBe(5);
  });

  it('leaves every image equal to its source content overlaid with every logged write', () => {
    expect(figures.corrupt).toEqual([]);
    expect(figures.corruptImages).toBe(0);
  });

  it('leaves the fleet consistent (inventory and fleet checker)', () => {
    expect(figures.violations).toEqual([]);
    expect(figures.checkerViolations).toBe(0);
  });

  it('copies at most one chunk twice per kill per transfer (the engine counter)', () => {
    expect(figures.chunkBytes).toBeGreaterThan(0);
    expect(figures.maxRecopiedPerKillPerTransfer).toBeLessThanOrEqual(figures.chunkBytes);
  });
});

// The driver's image check itself: it must accept exactly what a SIGKILL may legitimately leave (a
// write that landed but was never logged, whose seq the restarted workload logged again elsewhere)
// and nothing else.
describe('the crash run image check', () => {
  const writeSize = 4096;
  let dir: string;
  let inventory: Inventory;
  let layout: FleetLayout;
  let image: string;
  let base: Buffer;

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rehome-check-'));
    inventory = openInventory(dir);
    layout = inventory.createFleet('check-fleet', {
      hosts: 1,
      instances: 1,
      volumeSizeBytes: MiB,
      workload: { writeBytesPerSec: MiB, writeSize },
    });
    const { volumeId, hostId, instanceId } = layout.volumes[0];
    image = path.join(dir, 'hosts', hostId, 'volumes', `${volumeId}.img`);
    fs.mkdirSync(path.dirname(image), { recursive: true });
    // Writes 1 and 2 logged; write 3 landed at slot 7 when its process was killed (at t=2500), and
    // the restarted workload wrote seq 3 again, at slot 9, and logged that.
    const log = new WorkloadLog(dir, instanceId);
    const writes = [
      { seq: 1, t: 1000, slot: 3 },
      { seq: 2, t: 2000, slot: 5 },
      { seq: 3, t: 3000, slot: 9 },
    ];
    base = patternBytes(volumePatternSeed(volumeId), MiB);
    for (const w of writes) {
      log.append({
        seq: w.seq,
        t: w.t,
        host: hostId,
        volume: volumeId,
        offset: w.slot * writeSize,
        length: writeSize,
      });
      patternBytes(writeSeed(instanceId, w.seq), writeSize).copy(base, w.slot * writeSize);
    }
    log.close();
  });

  afterAll(() => {
    inventory.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const withImage = (change: (b: Buffer) => void) => {
    const bytes = Buffer.from(base);
    change(bytes);
    fs.writeFileSync(image, bytes);
  };
  const unlogged = (b: Buffer) =>
    patternBytes(writeSeed(layout.instances[0].instanceId, 3), writeSize).copy(b, 7 * writeSize);

  it('accepts the initial content overlaid with every logged write', () => {
    withImage(() => undefined);
    expect(checkImages(dir, inventory, layout)).toEqual({
      corrupt: [],
      volumesChecked: 1,
      unackedWritesLanded: 0,
    });
  });

  it('accepts the one write in flight at a kill that landed unlogged', () => {
    withImage(unlogged);
    const result = checkImages(dir, inventory, layout, new Map([['h-1', [2500]]]));
    expect(result.corrupt).toEqual([]);
    expect(result.unackedWritesLanded).toBe(1);
  });

  it('rejects that write without a kill, or at a kill it could not have been in flight at, and any other change', () => {
    withImage(unlogged);
    expect(checkImages(dir, inventory, layout).corrupt).toHaveLength(1);
    expect(checkImages(dir, inventory, layout, new Map([['h-1', [1500]]])).corrupt).toHaveLength(1);
    withImage((b) => (b[12345] ^= 1));
    expect(checkImages(dir, inventory, layout, new Map([['h-1', [2500]]])).corrupt[0]).toMatch(
      /1 slot\(s\) of 4096 bytes differ .* first at byte 12288/,
    );
  });
});
