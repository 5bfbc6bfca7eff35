import Table from 'cli-table3';

// Borders around the table and under the head only: rows without separators read faster.
const COMPACT = { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' };

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
