import { randomBytes } from 'node:crypto';
import { HASH_BYTES } from './chunk-hasher';
import type { ObjectStore } from './object-store';

/**
 * Chunks are stored in packs: one object holding many chunks back to back, written whole by one
 * put, plus a small index object (`.idx`) listing each chunk's hash, offset and length. One file
 * per 64 KiB chunk would mean 16k object creations per GiB; a pack of tens of MiB costs three.
 *
 * The index object is written after its pack and deleted before it, so an index always describes a
 * pack that is fully there; a pack without an index (a writer killed between the two puts) is
 * garbage that GC removes. Packs are never modified, only deleted (or repacked into a new one).
 */

export interface PackEntry {
  hash: string;
  offset: number;
  length: number;
}

export interface ChunkLocation extends PackEntry {
  packId: string;
}

export interface PackInfo {
  packId: string;
  bytes: number;
  entries: PackEntry[];
}

const MAGIC = Buffer.from('rhpack01', 'latin1');
const HEADER_BYTES = 16; // magic, entry count (u32), reserved (u32)
const ENTRY_BYTES = HASH_BYTES + 8 + 4; // hash, offset (u64), length (u32)
const PACK_KEY = /\/packs\/[0-9a-f]{2}\/([0-9a-f]{32})\.(pack|idx)$/;

export function newPackId(): string {
  return randomBytes(16).toString('hex');
}

export function packsPrefix(account: string): string {
  return `${account}/packs/`;
}

export function packKey(account: string, packId: string): string {
  return `${account}/packs/${packId.slice(0, 2)}/${packId}.pack`;
}

export function packIndexKey(account: string, packId: string): string {
  return `${account}/packs/${packId.slice(0, 2)}/${packId}.idx`;
}

/** The pack id and kind of a key under packsPrefix, or undefined for anything else. */
export function parsePackKey(key: string): { packId: string; kind: 'pack' | 'idx' } | undefined {
  const m = PACK_KEY.exec(key);
  return m ? { packId: m[1], kind: m[2] as 'pack' | 'idx' } : undefined;
}

export function encodePackIndex(entries: readonly PackEntry[]): Buffer {
  const out = Buffer.alloc(HEADER_BYTES + entries.length * ENTRY_BYTES);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(entries.length, 8);
  entries.forEach((e, i) => {
    const at = HEADER_BYTES + i * ENTRY_BYTES;
    out.write(e.hash, at, HASH_BYTES, 'hex');
    // A u64 as two u32 halves: the same bytes as writeBigUInt64LE, without a BigInt per chunk.
    out.writeUInt32LE(e.offset % 2 ** 32, at + HASH_BYTES);
    out.writeUInt32LE(Math.floor(e.offset / 2 ** 32), at + HASH_BYTES + 4);
    out.writeUInt32LE(e.length, at + HASH_BYTES + 8);
  });
  return out;
}

export function decodePackIndex(buf: Buffer, key: string): PackEntry[] {
  const count = buf.length >= HEADER_BYTES ? buf.readUInt32LE(8) : -1;
  if (!buf.subarray(0, 8).equals(MAGIC) || buf.length !== HEADER_BYTES + count * ENTRY_BYTES) {
    throw new Error(`pack index ${key} is malformed (${buf.length} bytes)`);
  }
  const entries: PackEntry[] = [];
  for (let i = 0; i < count; i++) {
    const at = HEADER_BYTES + i * ENTRY_BYTES;
    entries.push({
      hash: buf.toString('hex', at, at + HASH_BYTES),
      offset: buf.readUInt32LE(at + HASH_BYTES) + buf.readUInt32LE(at + HASH_BYTES + 4) * 2 ** 32,
      length: buf.readUInt32LE(at + HASH_BYTES + 8),
    });
  }
  return entries;
}

/**
 * One account's chunk hashes → where they are stored, loaded from the pack indexes. A hash may sit
 * in more than one pack (two concurrent uploads stored the same new chunk, or a repack is under
 * way); any copy serves, and losing one pack leaves the others.
 */
export class AccountChunkIndex {
  private readonly byHash = new Map<string, ChunkLocation[]>();
  private readonly packs = new Map<string, PackInfo>();
  /** Chunks being stored by an upload in this process: resolves true once they are durable. */
  readonly pending = new Map<string, Promise<boolean>>();

  constructor(readonly account: string) {}

  get(hash: string): ChunkLocation | undefined {
    return this.byHash.get(hash)?.[0];
  }

  has(hash: string): boolean {
    return this.byHash.has(hash);
  }

  allPacks(): PackInfo[] {
    return [...this.packs.values()];
  }

  addPack(packId: string, entries: PackEntry[]): void {
    if (this.packs.has(packId)) return;
    const last = entries[entries.length - 1];
    this.packs.set(packId, { packId, bytes: last ? last.offset + last.length : 0, entries });
    for (const e of entries) {
      const loc: ChunkLocation = { hash: e.hash, offset: e.offset, length: e.length, packId };
      const locs = this.byHash.get(e.hash);
      if (locs) locs.push(loc);
      else this.byHash.set(e.hash, [loc]);
    }
  }

  removePack(packId: string): void {
    const pack = this.packs.get(packId);
    if (!pack) return;
    this.packs.delete(packId);
    for (const e of pack.entries) {
      const locs = this.byHash.get(e.hash)?.filter((l) => l.packId !== packId);
      if (locs && locs.length > 0) this.byHash.set(e.hash, locs);
      else this.byHash.delete(e.hash);
    }
  }

  /**
   * Brings the index up to date with the store: loads indexes of packs written since (by this
   * process or another) and forgets packs deleted since. Returns the store's pack listing.
   */
  async refresh(objects: ObjectStore): Promise<{ packs: Set<string>; indexes: Set<string> }> {
    const packs = new Set<string>();
    const indexes = new Set<string>();
    for (const key of await objects.list(packsPrefix(this.account))) {
      const parsed = parsePackKey(key);
      if (parsed?.kind === 'pack') packs.add(parsed.packId);
      else if (parsed?.kind === 'idx') indexes.add(parsed.packId);
    }
    for (const packId of [...this.packs.keys()]) {
      if (!indexes.has(packId) || !packs.has(packId)) this.removePack(packId);
    }
    for (const packId of indexes) {
      if (this.packs.has(packId) || !packs.has(packId)) continue;
      const key = packIndexKey(this.account, packId);
      const buf = await objects.get(key);
      if (buf) this.addPack(packId, decodePackIndex(buf, key));
    }
    return { packs, indexes };
  }
}
