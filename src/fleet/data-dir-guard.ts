import * as fs from 'node:fs';
import * as path from 'node:path';
import { invalidInput, shown } from '../contracts';

/**
 * What rehome itself keeps in its data dir: host disks (images, records, captures, restores), the
 * snapshot store, the workload logs, the inventory and the embedded Temporal server's files.
 */
const MANAGED = /^(hosts|object-store|workload-logs|(inventory|temporal)\.db.*|temporal-server\..*)$/;

/**
 * Refuses a path a client gave for an import or export when it is rehome's own state: an import
 * from there would hand another instance's image (another account's data), the inventory or the
 * snapshot store to this instance, and an export there would overwrite them. Symlinks are followed
 * as far as the path exists, so a link into the data dir is refused too. Other files in the data
 * dir (e.g. an image an operator put there) are allowed.
 */
export function assertOutsideDataDir(field: string, file: string, dataDir: string): string {
  const real = realPathOf(path.resolve(file));
  const root = realPathOf(path.resolve(dataDir));
  const inside = path.relative(root, real);
  const top = inside.split(path.sep)[0];
  if (inside === '' || (!inside.startsWith('..') && !path.isAbsolute(inside) && MANAGED.test(top))) {
    throw invalidInput(
      `${field} ${shown(file)} is part of rehome's own data in ${dataDir} (its images, inventory or snapshots): give a path outside it`,
    );
  }
  return file;
}

/** The real path of the longest existing prefix, with the rest appended as given. */
function realPathOf(file: string): string {
  const rest: string[] = [];
  for (let dir = file; ; dir = path.dirname(dir)) {
    try {
      return path.join(fs.realpathSync(dir), ...rest.reverse());
    } catch {
      if (path.dirname(dir) === dir) return file;
      rest.push(path.basename(dir));
    }
  }
}
