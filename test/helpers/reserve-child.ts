/**
 * A separate process racing others for capacity on one inventory file (see inventory.test.ts).
 * Usage: node -r ts-node/register/transpile-only reserve-child.ts <dataDir> <hostId> <keyPrefix> <attempts> <vcpu>
 * Prints "ready", waits for a line on stdin so every child starts at once, then prints one JSON result line.
 */
import { ApplicationFailure } from '@temporalio/common';
import { ErrorType } from '../../src/contracts';
import { openInventory } from '../../src/fleet/inventory';

const [dataDir, hostId, keyPrefix, attempts, vcpu] = process.argv.slice(2);
const inventory = openInventory(dataDir);
process.stdout.write('ready\n');
process.stdin.once('data', () => {
  const result = { reserved: [] as string[], noCapacity: 0, errors: [] as string[] };
  for (let n = 0; n < Number(attempts); n++) {
    const key = `${keyPrefix}-${n}`;
    try {
      inventory.reserve({
        key,
        hostId,
        instanceId: `i-${keyPrefix}-${n}`,
        resources: { vcpu: Number(vcpu), memoryMiB: 1, diskBytes: 1 },
      });
      result.reserved.push(key);
    } catch (err) {
      if (err instanceof ApplicationFailure && err.type === ErrorType.NoCapacity) result.noCapacity++;
      else result.errors.push(String(err));
    }
  }
  inventory.close();
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.stdin.pause();
});
