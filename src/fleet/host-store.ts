import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import {
  MAX_VOLUME_BYTES,
  SECTOR_SIZE,
  assertId,
  dataIntegrity,
  invalidInput,
  invalidState,
  isValidId,
  notFound,
} from '../contracts';
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

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function isNoEnt(err: unknown): boolean {
  return (err as NodeJS.ErrnoException)?.code === 'ENOENT';
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

  /** A unique sibling name for writing a file before renaming it into place. */
  tempPath(finalPath: string): string {
    return `${finalPath}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
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
    const tmp = this.tempPath(finalPath);
    await writeFile(tmp, JSON.stringify(sidecar, null, 2) + '\n');
    await rename(tmp, finalPath);
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
    await this.removeTemps(meta.volumeId, false);
    const finalPath = this.imagePath(meta.volumeId);
    const tmp = this.tempPath(finalPath);
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
    await this.removeTemps(volumeId, true);
  }

  async importImage(
    volumeId: string,
    meta: VolumeMeta,
    srcPath: string,
    onProgress?: (bytesDone: number) => void,
  ): Promise<{ sha256: string }> {
    assertId('volumeId', volumeId);
    checkVolumeMeta(meta);
    if (meta.volumeId !== volumeId) {
      throw invalidInput(`import of volume ${volumeId} was given metadata for volume ${meta.volumeId}`);
    }
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
    await this.removeTemps(volumeId, false);
    const finalPath = this.imagePath(volumeId);
    const tmp = this.tempPath(finalPath);
    const readHash = createHash('sha256');
    const src = await open(srcPath, 'r');
    try {
      const dst = await open(tmp, 'w');
      try {
        await dst.truncate(meta.sizeBytes);
        await copyFile(src, dst, meta.sizeBytes, readHash, onProgress);
      } finally {
        await dst.close();
      }
    } finally {
      await src.close();
    }
    const sha256 = readHash.digest('hex');
    const written = await sha256OfFile(tmp, meta.sizeBytes);
    if (written !== sha256) {
      await rm(tmp, { force: true });
      throw dataIntegrity(
        `import of ${srcPath} into volume ${volumeId} on host ${this.hostId}: the image written (sha256 ${written}) differs from what was read (${sha256}); check the disk and retry`,
      );
    }
    await rename(tmp, finalPath);
    await this.writeSidecar({ format: 1, ...pickMeta(meta), importSha256: sha256 });
    return { sha256 };
  }

  /** Reads through the device (a replica mid-sync fetches what it lacks) and writes destPath atomically. */
  async exportImage(device: BlockDevice, destPath: string): Promise<{ sha256: string; sizeBytes: number }> {
    const tmp = this.tempPath(destPath);
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
  private async removeTemps(volumeId: string, all: boolean): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.volumesDir);
    } catch (err) {
      if (isNoEnt(err)) return;
      throw err;
    }
    const prefix = new RegExp(`^${volumeId}\\.(img|json|map)\\.tmp-(\\d+)-[0-9a-f]+$`);
    for (const name of names) {
      const m = prefix.exec(name);
      if (m && (all || !pidAlive(Number(m[2])))) await rm(path.join(this.volumesDir, name), { force: true });
    }
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

export async function sha256OfFile(file: string, sizeBytes: number): Promise<string> {
  const hash = createHash('sha256');
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(Math.min(IO_CHUNK, Math.max(sizeBytes, 1)));
    for (let offset = 0; offset < sizeBytes; offset += buf.length) {
      const piece = buf.subarray(0, Math.min(buf.length, sizeBytes - offset));
      await readFully(fh, piece, offset);
      hash.update(piece);
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}
