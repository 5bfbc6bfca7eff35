import { createHash, type Hash } from 'node:crypto';
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
  hashTree(hash, dataDir, path.join(dataDir, 'hosts'));
  return hash.digest('hex');
}

/** Adds every file under `dir` (its path relative to `dataDir`, then its bytes) to `hash`, in order. */
export function hashTree(hash: Hash, dataDir: string, dir: string): void {
  const files = fs.existsSync(dir)
    ? (fs.readdirSync(dir, { recursive: true }) as string[])
        .map((f) => path.join(dir, f))
        .filter((f) => fs.statSync(f).isFile())
        .sort()
    : [];
  for (const file of files) {
    hash.update(path.relative(dataDir, file));
    hash.update(fs.readFileSync(file));
  }
}
