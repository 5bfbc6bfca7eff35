import { randomBytes } from 'node:crypto';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, rename, rm, writeFile } from 'node:fs/promises';
import * as path from 'node:path';

/**
 * Files are replaced by writing a sibling temp file and renaming it over the final name, so a reader
 * (or a process restarted after a SIGKILL) sees the old content or the new, never a torn mix. No
 * fsync: a killed process loses nothing the kernel already has.
 *
 * Temp names are `<final name>.tmp-<writer pid>-<hex>`: the pid tells a cleanup whether the
 * writer may still be at work, the hex part (a random start per process, then a counter) keeps two
 * writers apart without a random draw per file.
 */
const TEMP_NAME = /^(.+)\.tmp-(\d+)-[0-9a-f]+$/;
const tempPrefix = `${process.pid}-${randomBytes(4).toString('hex')}`;
let tempCount = 0;

/** The final name and writer pid of a temp name tempPath made (a path or a bare name); else undefined. */
export function parseTempName(name: string): { finalName: string; pid: number } | undefined {
  const m = TEMP_NAME.exec(name);
  return m ? { finalName: m[1], pid: Number(m[2]) } : undefined;
}

export function isNoEnt(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/** True while a process with this pid exists (EPERM: it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A unique sibling name for writing a file before renaming it into place. */
export function tempPath(finalPath: string): string {
  return `${finalPath}.tmp-${tempPrefix}${(tempCount++).toString(16).padStart(8, '0')}`;
}

export async function writeFileAtomic(finalPath: string, data: string | Buffer): Promise<void> {
  const tmp = tempPath(finalPath);
  try {
    await writeFile(tmp, data);
    await rename(tmp, finalPath);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Synchronous, so a caller's read-modify-write of the file never interleaves with another's. */
export function writeFileAtomicSync(finalPath: string, data: string | Buffer): void {
  const tmp = tempPath(finalPath);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, finalPath);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * Removes the temp files in `dir` left by interrupted writes of the files whose names `isFor`
 * accepts: with all=false only those whose writer process is gone (a live one may be about to
 * rename its file into place).
 */
export async function removeTemps(
  dir: string,
  isFor: (finalName: string) => boolean,
  all = false,
): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isNoEnt(err)) return;
    throw err;
  }
  for (const name of names) {
    const temp = parseTempName(name);
    if (temp && isFor(temp.finalName) && (all || !processAlive(temp.pid))) {
      await rm(path.join(dir, name), { force: true });
    }
  }
}
