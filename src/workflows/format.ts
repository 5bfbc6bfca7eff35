/** Plain-language numbers for current-details lines: 268435456 → "256 MiB". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = Math.round(ms / 1000);
  if (seconds < 120) return `${seconds} s`;
  return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

/** "blocks 3, 9, 12 … (40 in all)": enough for an operator to look, short enough for one line. */
export function formatList(items: readonly (string | number)[], max = 16): string {
  const shown = items.slice(0, max).join(', ');
  return items.length > max ? `${shown} … (${items.length} in all)` : shown;
}
