/**
 * Sizes as operators type them: 256MiB, 1GiB, 512M, 4096. K/M/G/T and KiB/MiB/GiB/TiB are powers of
 * 1024 (as in dd and qemu-img); KB/MB/GB/TB are powers of 1000. Units are case-insensitive.
 */
const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  kb: 1000,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  mb: 1000 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  gb: 1000 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  tb: 1000 ** 4,
};

const SIZE = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i;

/** Bytes in `text`, or an Error naming `what` and showing the accepted forms. */
export function parseSize(text: string, what = 'size'): number {
  const hint = 'use a whole number of bytes with an optional unit, e.g. 256MiB, 1GiB, 512M or 4096';
  const match = SIZE.exec(text);
  if (!match) throw new Error(`${what} ${JSON.stringify(text)} is not a size: ${hint}`);
  const unit = UNITS[match[2].toLowerCase()];
  if (unit === undefined) {
    throw new Error(`${what} ${JSON.stringify(text)} has an unknown unit "${match[2]}": ${hint}`);
  }
  const bytes = Number(match[1]) * unit;
  if (!Number.isSafeInteger(bytes)) {
    const why = Number.isInteger(bytes) ? 'is too large' : 'is not a whole number of bytes';
    throw new Error(`${what} ${JSON.stringify(text)} ${why}: ${hint}`);
  }
  return bytes;
}

/** A rate in bytes per second: a size with an optional "/s"; 0 or "unlimited" means no limit. */
export function parseRate(text: string, what = 'rate'): number {
  if (/^\s*unlimited\s*$/i.test(text)) return 0;
  return parseSize(text.replace(/\/s\s*$/i, ''), what);
}

/** A whole number >= min, for counts such as --hosts. */
export function parseCount(text: string, what: string, min = 1): number {
  const value = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`${what} ${JSON.stringify(text)} is not valid: give a whole number >= ${min}`);
  }
  return value;
}
