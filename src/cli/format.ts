import Table from 'cli-table3';

const UNITS = ['KiB', 'MiB', 'GiB', 'TiB'];

// Borders around the table and under the head only: rows without separators read faster.
const COMPACT = { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' };

/** 268435456 → "256 MiB", 1610612736 → "1.5 GiB", 512 → "512 B". */
export function humanBytes(bytes: number): string {
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

export function humanRate(bytesPerSec: number): string {
  return bytesPerSec === 0 ? 'unlimited' : `${humanBytes(bytesPerSec)}/s`;
}

/** 12 → "12 ms", 3200 → "3.2 s", 125000 → "2 min 5 s". */
export function humanDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${Number((ms / 1000).toFixed(1))} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/** A plain table (no colours, so logs and pipes stay readable). */
export function table(head: string[], rows: (string | number)[][]): string {
  const t = new Table({ head, chars: COMPACT, style: { head: [], border: [] } });
  t.push(...rows.map((r) => r.map(String)));
  return t.toString();
}

/** Two-column key/value table. */
export function keyValues(rows: [string, string | number][]): string {
  const t = new Table({ chars: COMPACT, style: { head: [], border: [] } });
  t.push(...rows.map(([k, v]) => ({ [k]: String(v) })));
  return t.toString();
}
