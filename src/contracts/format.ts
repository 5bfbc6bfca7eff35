/** Plain-language numbers for current details, CLI output and messages, shared so they read alike. */

const UNITS = ['KiB', 'MiB', 'GiB', 'TiB'];

/** 268435456 → "256 MiB", 1610612736 → "1.5 GiB", 512 → "512 B". */
export function formatBytes(bytes: number): string {
  if (Math.abs(bytes) < 1024) return `${bytes} B`;
  let value = bytes;
  let unit = 'B';
  for (const next of UNITS) {
    if (Math.abs(value) < 1024) break;
    value /= 1024;
    unit = next;
  }
  return `${Number(value.toFixed(value < 10 ? 2 : 1))} ${unit}`;
}

export function formatRate(bytesPerSec: number): string {
  return bytesPerSec === 0 ? 'unlimited' : `${formatBytes(bytesPerSec)}/s`;
}

/** 12 → "12 ms", 3200 → "3.2 s", 125000 → "2 min 5 s". */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${Number((ms / 1000).toFixed(1))} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** "blocks 3, 9, 12 … (40 in all)": enough for an operator to look, short enough for one line. */
export function formatList(items: readonly (string | number)[], max = 16): string {
  const shown = items.slice(0, max).join(', ');
  return items.length > max ? `${shown} … (${items.length} in all)` : shown;
}
