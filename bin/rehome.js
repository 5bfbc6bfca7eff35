#!/usr/bin/env node
// `npx rehome` from the project folder: run the TypeScript CLI through ts-node, transpile only
// (`npm run build` type-checks). swc (installed with @temporalio/worker) makes start-up about twice
// as fast as TypeScript's own transpiler; without it ts-node falls back to that.
'use strict';
const path = require('node:path');

const root = path.resolve(__dirname, '..');
let swc = true;
try {
  require.resolve('@swc/core', { paths: [root] });
} catch {
  swc = false;
}
require('ts-node').register({ transpileOnly: true, swc, project: path.join(root, 'tsconfig.json') });
require(path.join(root, 'src', 'cli.ts')).run();
