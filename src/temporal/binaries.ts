import fs from 'node:fs';
import path from 'node:path';

/** The repository root: binaries installed by scripts/install-tools.js live under it. */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');

const TOOLS_BIN = path.join(REPO_ROOT, '.tools', 'temporal', 'bin');

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Like `which`: the first executable called `name` in a PATH-style list of directories. */
export function findOnPath(name: string, pathList = process.env.PATH ?? ''): string | undefined {
  const exts = process.platform === 'win32' ? ['.exe', '.cmd', ''] : [''];
  for (const dir of pathList.split(path.delimiter).filter(Boolean)) {
    for (const ext of exts) {
      const candidate = path.join(dir, name + ext);
      if (isExecutable(candidate)) return candidate;
    }
  }
  return undefined;
}

function lookup(envVar: string, name: string, env: NodeJS.ProcessEnv): string | undefined {
  const explicit = env[envVar];
  if (explicit) {
    // An explicit path that is wrong is a mistake worth reporting, not something to route around.
    if (!isExecutable(explicit)) throw new Error(`${envVar}=${explicit} is not an executable file`);
    return explicit;
  }
  const bundled = path.join(TOOLS_BIN, process.platform === 'win32' ? `${name}.exe` : name);
  if (isExecutable(bundled)) return bundled;
  return findOnPath(name, env.PATH ?? '');
}

/**
 * The `temporal` CLI that runs the embedded dev server: REHOME_TEMPORAL_CLI, then the pinned copy
 * under .tools/, then PATH. Undefined means: let the SDK download one (needs internet).
 */
export function temporalCliPath(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return lookup('REHOME_TEMPORAL_CLI', 'temporal', env);
}

/** The time-skipping test server, found the same way (REHOME_TEMPORAL_TEST_SERVER first). */
export function testServerPath(env: NodeJS.ProcessEnv = process.env): string | undefined {
  return lookup('REHOME_TEMPORAL_TEST_SERVER', 'temporal-test-server', env);
}
