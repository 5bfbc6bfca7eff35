import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { VolumeRecord } from '../../src/contracts';
import { decodePackIndex } from '../../src/fleet/chunk-pack';
import type { Inventory } from '../../src/fleet/inventory';
import { objectStoreRoot } from '../../src/fleet/object-store';
import { patternBytes, volumePatternSeed } from '../../src/fleet/pattern';
import type { SnapshotStore } from '../../src/fleet/snapshot-store';
import type { Workload } from '../../src/fleet/workload';
import { overlayLoggedWrites, type WorkloadLogEntry } from '../../src/fleet/workload-log';
import type { RunningWorkers } from '../../src/worker';
import { fleetFingerprint, hashTree } from './fingerprint';

/** Every byte of a committed snapshot, read (and hash-verified) through the store. */
export async function snapshotBytes(
  store: SnapshotStore,
  account: string,
  snapshotId: string,
): Promise<Buffer> {
  const parts: Buffer[] = [];
  // Batches may be views of buffers the store reuses: copy each one out.
  for await (const { data } of store.readAll(account, snapshotId)) parts.push(Buffer.from(data));
  return Buffer.concat(parts);
}

/** What a volume held right after write `atSeq`: its initial pattern plus every logged write up to it. */
export function volumeAsOf(
  volume: Pick<VolumeRecord, 'volumeId' | 'sizeBytes'>,
  instanceId: string,
  log: WorkloadLogEntry[],
  atSeq: number,
): Buffer {
  return overlayLoggedWrites(
    patternBytes(volumePatternSeed(volume.volumeId), volume.sizeBytes),
    instanceId,
    volume.volumeId,
    log.filter((e) => e.seq <= atSeq),
  );
}

export function imagePath(dataDir: string, hostId: string, volumeId: string): string {
  return path.join(dataDir, 'hosts', hostId, 'volumes', `${volumeId}.img`);
}

/** fleetFingerprint (inventory and every host file) plus every object of the snapshot store. */
export function dataFingerprint(dataDir: string, inventory: Inventory): string {
  const hash = createHash('sha256').update(fleetFingerprint(dataDir, inventory));
  hashTree(hash, dataDir, objectStoreRoot(dataDir));
  return hash.digest('hex');
}

/**
 * Flips one byte of a stored chunk in its pack file, found through the pack indexes on disk (not
 * the store's memory). Returns a function that puts the byte back.
 */
export function corruptStoredChunk(dataDir: string, account: string, chunkHash: string): () => void {
  const packs = path.join(objectStoreRoot(dataDir), account, 'packs');
  for (const name of fs.readdirSync(packs, { recursive: true }) as string[]) {
    if (!name.endsWith('.idx')) continue;
    const entry = decodePackIndex(fs.readFileSync(path.join(packs, name)), name).find(
      (e) => e.hash === chunkHash,
    );
    if (!entry) continue;
    const pack = path.join(packs, name.replace(/\.idx$/, '.pack'));
    const at = entry.offset + Math.floor(entry.length / 2);
    const flip = () => {
      const fd = fs.openSync(pack, 'r+');
      try {
        const byte = Buffer.alloc(1);
        fs.readSync(fd, byte, 0, 1, at);
        byte[0] ^= 0xff;
        fs.writeSync(fd, byte, 0, 1, at);
      } finally {
        fs.closeSync(fd);
      }
    };
    flip();
    return flip;
  }
  throw new Error(`chunk ${chunkHash} is in no pack of account ${account}`);
}

/** Pauses every running workload of the fleet; the returned function resumes them. */
export async function pauseAllWorkloads(workers: RunningWorkers): Promise<() => Promise<void>> {
  const paused: Workload[] = [];
  for (const instance of workers.inventory.listInstances()) {
    const workload = workers.fleet.localAgent(instance.hostId)?.workload(instance.instanceId);
    if (workload?.state !== 'running') continue;
    await workload.pause();
    paused.push(workload);
  }
  return async () => {
    for (const workload of paused) await workload.resume(workload.lastSeq + 1);
  };
}

/** Polls `check` every 50 ms until it returns true; fails after `timeoutMs` saying what it waited for. */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The ApplicationFailure a failed workflow surfaced (directly, or as the cause of its wrapper). */
export function workflowFailureOf(err: unknown): unknown {
  expect(err).toBeInstanceOf(WorkflowFailedError);
  const cause = (err as WorkflowFailedError).cause;
  return cause instanceof ApplicationFailure ? cause : cause?.cause;
}
