import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Inventory } from '../../src/fleet/inventory';

/**
 * One hash over the whole inventory and every file the host stores hold (images, sidecars, sync maps,
 * instance records): equal before and after means a request changed nothing.
 */
export function fleetFingerprint(dataDir: string, inventory: Inventory): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify(inventory.snapshot()));
  const hostsDir = path.join(dataDir, 'hosts');
  const files = fs.existsSync(hostsDir)
    ? (fs.readdirSync(hostsDir, { recursive: true }) as string[])
        .map((f) => path.join(hostsDir, f))
        .filter((f) => fs.statSync(f).isFile())
        .sort()
    : [];
  for (const file of files) {
    hash.update(path.relative(dataDir, file));
    hash.update(fs.readFileSync(file));
  }
  return hash.digest('hex');
}
