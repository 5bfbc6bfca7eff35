import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import {
  MAX_VOLUME_BYTES,
  SECTOR_SIZE,
  assertId,
  invalidInput,
  invalidState,
  isValidId,
  notFound,
} from '../contracts';
import { isNoEnt, removeTemps, tempPath, writeFileAtomic } from './atomic-file';
import type { BlockDevice } from './block-device';
import { fillPattern, volumePatternSeed } from './pattern';
import { Volume, readFully, writeFully } from './volume';

export interface VolumeMeta {
  volumeId: string;
  instanceId: string;
  sizeBytes: number;
  blockSize: number;
  userData: boolean;
}

/** Counters a replica keeps over its whole sync; kept in the sidecar after finalize for the record. */
export interface SyncCounters {
  bytesCopied: number;
  bytesReadThrough: number;
  bytesRecopied: number;
}

/**
 * What `<volumeId>.json` holds. It is written last (temp + rename) when a volume is created and
 * removed first when it is deleted, so its presence means the image is complete, or, with
 * `replica`, that the image plus its `.map` form a replica being synchronised.
 */
export interface VolumeSidecar extends VolumeMeta {
  format: 1;
  replica?: boolean;
  /** sha256 of the image as imported, so a retried import answers without re-reading. */
  importSha256?: string;
  /** Final counters of the post-sync that produced this volume. */
  sync?: SyncCounters;
}

const IO_CHUNK = 4 * 1024 * 1024;
const MAX_BLOCK_SIZE = 16 * 1024 * 1024;

export function checkVolumeMeta(meta: VolumeMeta): void {
  assertId('volumeId', meta.volumeId);
  assertId('instanceId', meta.instanceId);
  const { sizeBytes, blockSize } = meta;
  if (
    !Number.isSafeInteger(sizeBytes) ||
    sizeBytes <= 0 ||
    sizeBytes % SECTOR_SIZE !== 0 ||
    sizeBytes > MAX_VOLUME_BYTES
  ) {
    throw invalidInput(
      `volume ${meta.volumeId}: size ${sizeBytes} is not a positive multiple of ${SECTOR_SIZE} bytes up to ${MAX_VOLUME_BYTES}`,
    );
  }
  if (
    !Number.isSafeInteger(blockSize) ||
    blockSize < SECTOR_SIZE ||
    blockSize % SECTOR_SIZE !== 0 ||
    blockSize > MAX_BLOCK_SIZE
  ) {
    throw invalidInput(
      `volume ${meta.volumeId}: block size ${blockSize} must be a multiple of ${SECTOR_SIZE} between ${SECTOR_SIZE} and ${MAX_BLOCK_SIZE}`,
    );
  }
  if (typeof meta.userData !== 'boolean')
    throw invalidInput(`volume ${meta.volumeId}: userData must be true or false`);
}

export function sameMeta(a: VolumeMeta, b: VolumeMeta): boolean {
  return (
    a.volumeId === b.volumeId &&
    a.instanceId === b.instanceId &&
    a.sizeBytes === b.sizeBytes &&
    a.blockSize === b.blockSize &&
    a.userData === b.userData
  );
}

/** Just the VolumeMeta fields of a sidecar (or anything carrying them). */
export function pickMeta(s: VolumeMeta): VolumeMeta {
  return {
    volumeId: s.volumeId,
    instanceId: s.instanceId,
    sizeBytes: s.sizeBytes,
    blockSize: s.blockSize,
    userData: s.userData,
  };
}

/**
 * One simulated host's disk: raw images under `<dataDir>/hosts/<hostId>/volumes/`, each with a JSON
 * sidecar (and a `.map` while it is a replica being synchronised).
 */
export class HostStore {
  readonly hostId: string;
  readonly root: string;
  private readonly volumesDir: string;

  constructor(dataDir: string, hostId: string) {
    this.hostId = assertId('hostId', hostId);
    this.root = path.join(dataDir, 'hosts', hostId);
    this.volumesDir = path.join(this.root, 'volumes');
  }

  imagePath(volumeId: string): string {
    return path.join(this.volumesDir, `${assertId('volumeId', volumeId)}.img`);
  }

  metaPath(volumeId: string): string {
    return path.join(this.volumesDir, `${assertId('volumeId', volumeId)}.json`);
  }

  mapPath(volumeId: string): string {
    return path.join(this.volumesDir, `${assertId('volumeId', volumeId)}.map`);
  }

  hasVolume(volumeId: string): boolean {
    return existsSync(this.metaPath(volumeId));
  }

  listVolumes(): string[] {
    let names: string[];
    try {
      names = readdirSync(this.volumesDir);
    } catch (err) {
      if (isNoEnt(err)) return [];
      throw err;
    }
    return names
      .filter((n) => n.endsWith('.json'))
      .map((n) => n.slice(0, -'.json'.length))
      .filter(isValidId)
      .sort();
  }

  readSidecar(volumeId: string): VolumeSidecar | undefined {
    let text: string;
    try {
      text = readFileSync(this.metaPath(volumeId), 'utf8');
    } catch (err) {
      if (isNoEnt(err)) return undefined;
      throw err;
    }
    return JSON.parse(text) as VolumeSidecar;
  }

  readMeta(volumeId: string): VolumeMeta {
    const sidecar = this.readSidecar(volumeId);
    if (!sidecar) throw notFound(`volume ${volumeId} does not exist on host ${this.hostId}`);
    return pickMeta(sidecar);
  }

  /** Atomically replaces the sidecar (temp + rename). */
  async writeSidecar(sidecar: VolumeSidecar): Promise<void> {
    const finalPath = this.metaPath(sidecar.volumeId);
    await this.ensureDir();
    await writeFileAtomic(finalPath, JSON.stringify(sidecar, null, 2) + '\n');
  }

  async ensureDir(): Promise<void> {
    await mkdir(this.volumesDir, { recursive: true });
  }

  async createVolume(meta: VolumeMeta, fill: 'zero' | 'pattern'): Promise<void> {
    checkVolumeMeta(meta);
    if (fill !== 'zero' && fill !== 'pattern')
      throw invalidInput(`volume fill must be 'zero' or 'pattern', got ${fill}`);
    if (this.checkExisting(meta)) return;
    await this.ensureDir();
    await this.removeVolumeTemps(meta.volumeId, false);
    const finalPath = this.imagePath(meta.volumeId);
    const tmp = tempPath(finalPath);
    const fh = await open(tmp, 'w');
    try {
      await fh.truncate(meta.sizeBytes);
      if (fill === 'pattern') await writePattern(fh, volumePatternSeed(meta.volumeId), meta.sizeBytes);
    } finally {
      await fh.close();
    }
    await rename(tmp, finalPath);
    await this.writeSidecar({ format: 1, ...pickMeta(meta) });
  }

  async openVolume(volumeId: string): Promise<Volume> {
    const sidecar = this.readSidecar(volumeId);
    if (!sidecar) throw notFound(`volume ${volumeId} does not exist on host ${this.hostId}`);
    if (sidecar.replica) {
      throw invalidState(
        `volume ${volumeId} on host ${this.hostId} is a replica still being synchronised: open it as a replica`,
      );
    }
    // A map next to a plain volume is what an interrupted finalize leaves behind.
    await rm(this.mapPath(volumeId), { force: true });
    return Volume.open(this.imagePath(volumeId), sidecar);
  }

  /** Sidecar first, so an interrupted delete never leaves something that looks like a complete volume. */
  async deleteVolume(volumeId: string): Promise<void> {
    await rm(this.metaPath(volumeId), { force: true });
    await rm(this.mapPath(volumeId), { force: true });
    await rm(this.imagePath(volumeId), { force: true });
    await this.removeVolumeTemps(volumeId, true);
  }

  /**
   * Copies a raw image in as a new volume. The sha256 is of the bytes as read while copying: the
   * written copy is not read back (that would only re-hash it from the page cache).
   */
  async importImage(
    meta: VolumeMeta,
    srcPath: string,
    onProgress?: (bytesDone: number) => void,
  ): Promise<{ sha256: string }> {
    checkVolumeMeta(meta);
    const { volumeId } = meta;
    const existing = this.readSidecar(volumeId);
    if (existing) {
      if (sameMeta(existing, meta) && !existing.replica && existing.importSha256)
        return { sha256: existing.importSha256 };
      throw invalidState(
        `volume ${volumeId} already exists on host ${this.hostId} and was not imported with this size/instance: pick another volume id or delete it first`,
      );
    }
    const srcStat = await stat(srcPath).catch((err: unknown) => {
      if (isNoEnt(err))
        throw notFound(`image file ${srcPath} does not exist (give an absolute path readable by the worker)`);
      throw err;
    });
    if (!srcStat.isFile())
      throw invalidInput(`${srcPath} is not a regular file: give the path of a raw disk image`);
    if (srcStat.size !== meta.sizeBytes) {
      throw invalidInput(
        `image ${srcPath} is ${srcStat.size} bytes but volume ${volumeId} was declared ${meta.sizeBytes} bytes`,
      );
    }

    await this.ensureDir();
    await this.removeVolumeTemps(volumeId, false);
    const finalPath = this.imagePath(volumeId);
    const tmp = tempPath(finalPath);
    const hash = createHash('sha256');
    const src = await open(srcPath, 'r');
    try {
      const dst = await open(tmp, 'w');
      try {
        await dst.truncate(meta.sizeBytes);
        await copyFile(src, dst, meta.sizeBytes, hash, onProgress);
      } finally {
        await dst.close();
      }
    } finally {
      await src.close();
    }
    const sha256 = hash.digest('hex');
    await rename(tmp, finalPath);
    await this.writeSidecar({ format: 1, ...pickMeta(meta), importSha256: sha256 });
    return { sha256 };
  }

  /** Reads through the device (a replica mid-sync fetches what it lacks) and writes destPath atomically. */
  async exportImage(device: BlockDevice, destPath: string): Promise<{ sha256: string; sizeBytes: number }> {
    const tmp = tempPath(destPath);
    const dst = await open(tmp, 'w').catch((err: unknown) => {
      if (isNoEnt(err)) throw invalidInput(`cannot write ${destPath}: its directory does not exist`);
      throw err;
    });
    const hash = createHash('sha256');
    try {
      await dst.truncate(device.sizeBytes);
      let next = device.sizeBytes > 0 ? device.read(0, Math.min(IO_CHUNK, device.sizeBytes)) : undefined;
      for (let offset = 0; next;) {
        const data = await next;
        const following = offset + data.length;
        next =
          following < device.sizeBytes
            ? device.read(following, Math.min(IO_CHUNK, device.sizeBytes - following))
            : undefined;
        // A failed write must not leave the prefetch's rejection unhandled.
        next?.catch(() => undefined);
        hash.update(data);
        await writeFully(dst, data, offset);
        offset = following;
      }
    } catch (err) {
      await dst.close();
      await rm(tmp, { force: true });
      throw err;
    }
    await dst.close();
    await rename(tmp, destPath);
    return { sha256: hash.digest('hex'), sizeBytes: device.sizeBytes };
  }

  /** Returns true when the same volume is already complete; throws if the id is taken differently. */
  private checkExisting(meta: VolumeMeta): boolean {
    const existing = this.readSidecar(meta.volumeId);
    if (!existing) return false;
    if (existing.replica) {
      throw invalidState(
        `volume ${meta.volumeId} on host ${this.hostId} is a replica being synchronised; delete it first`,
      );
    }
    if (!sameMeta(existing, meta)) {
      throw invalidState(
        `volume ${meta.volumeId} already exists on host ${this.hostId} with size ${existing.sizeBytes}, block size ${existing.blockSize}, instance ${existing.instanceId}: delete it or pick another id`,
      );
    }
    return true;
  }

  /** Temp files of interrupted writes; with all=false only those whose writer process is gone. */
  private async removeVolumeTemps(volumeId: string, all: boolean): Promise<void> {
    const files = [this.imagePath(volumeId), this.metaPath(volumeId), this.mapPath(volumeId)].map((f) =>
      path.basename(f),
    );
    await removeTemps(this.volumesDir, (name) => files.includes(name), all);
  }
}

async function writePattern(fh: FileHandle, seed: string, sizeBytes: number): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(IO_CHUNK, sizeBytes));
  for (let offset = 0; offset < sizeBytes; offset += buf.length) {
    const piece = buf.subarray(0, Math.min(buf.length, sizeBytes - offset));
    fillPattern(seed, piece, offset);
    await writeFully(fh, piece, offset);
  }
}

async function copyFile(
  src: FileHandle,
  dst: FileHandle,
  sizeBytes: number,
  hash: ReturnType<typeof createHash>,
  onProgress?: (bytesDone: number) => void,
): Promise<void> {
  const buf = Buffer.allocUnsafe(Math.min(IO_CHUNK, sizeBytes));
  for (let offset = 0; offset < sizeBytes; offset += buf.length) {
    const piece = buf.subarray(0, Math.min(buf.length, sizeBytes - offset));
    await readFully(src, piece, offset);
    hash.update(piece);
    await writeFully(dst, piece, offset);
    onProgress?.(offset + piece.length);
  }
}
