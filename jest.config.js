/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  transform: { '^.+\\.ts$': 'ts-jest' },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // Integration tests start a real Temporal server and real workers; give them room.
  testTimeout: 120_000,
  setupFiles: ['<rootDir>/test/helpers/jest-setup.ts'],
  maxWorkers: 1,
};
