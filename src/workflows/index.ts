// The worker registers every function exported here as a workflow type, under its own name.
export { liveMigration } from './live-migration';
export { fleetInit } from './fleet-init';
export { volumeImport } from './volume-import';
export { volumeExport } from './volume-export';
export { preMigrationSnapshot } from './pre-migration-snapshot';
export { restoreInstance } from './restore-instance';
export { deleteSnapshot } from './delete-snapshot';
