import { createCipheriv, createHash } from 'node:crypto';

/**
 * Deterministic pseudo-random bytes: the AES-128-CTR keystream of a key and counter derived from
 * sha256(seed). Any byte range of the stream can be regenerated on its own (the counter is seekable),
 * so a test can rebuild the initial content of any part of a volume without keeping a copy.
 */

const AES_BLOCK = 16;
const PIECE = 1024 * 1024;
const ZEROS = Buffer.alloc(PIECE);
const MASK_128 = (1n << 128n) - 1n;

function keyAndCounter(seed: string, aesBlock: number): { key: Buffer; counter: Buffer } {
  const digest = createHash('sha256').update(seed, 'utf8').digest();
  const start = BigInt('0x' + digest.subarray(16, 32).toString('hex'));
  // OpenSSL's CTR mode increments the whole 128-bit counter big-endian; seek the same way.
  const value = (start + BigInt(aesBlock)) & MASK_128;
  const counter = Buffer.from(value.toString(16).padStart(32, '0'), 'hex');
  return { key: digest.subarray(0, 16), counter };
}

/** Fills target with keystream(seed)[streamOffset .. streamOffset + target.length). */
export function fillPattern(seed: string, target: Buffer, streamOffset = 0): void {
  if (!Number.isSafeInteger(streamOffset) || streamOffset < 0) {
    throw new RangeError(`pattern stream offset must be a non-negative integer, got ${streamOffset}`);
  }
  if (target.length === 0) return;
  const { key, counter } = keyAndCounter(seed, Math.floor(streamOffset / AES_BLOCK));
  const cipher = createCipheriv('aes-128-ctr', key, counter);
  const skip = streamOffset % AES_BLOCK;
  if (skip > 0) cipher.update(ZEROS.subarray(0, skip));
  for (let done = 0; done < target.length; done += PIECE) {
    const n = Math.min(PIECE, target.length - done);
    cipher.update(ZEROS.subarray(0, n)).copy(target, done);
  }
}

export function patternBytes(seed: string, length: number, streamOffset = 0): Buffer {
  const out = Buffer.allocUnsafe(length);
  fillPattern(seed, out, streamOffset);
  return out;
}

/** Seed of a volume's initial 'pattern' content: byte i of the image is patternBytes(seed, ..)[i]. */
export function volumePatternSeed(volumeId: string): string {
  return `vol:${volumeId}`;
}
