/** Workflow type names, as operators pass them to `temporal workflow start --type`. */
export const WorkflowType = {
  liveMigration: 'liveMigration',
  fleetInit: 'fleetInit',
  volumeImport: 'volumeImport',
  volumeExport: 'volumeExport',
  preMigrationSnapshot: 'preMigrationSnapshot',
  restoreInstance: 'restoreInstance',
  deleteSnapshot: 'deleteSnapshot',
} as const;

export const Operation = {
  liveMigration: 'live-migration',
  fleetInit: 'fleet-init',
  volumeImport: 'volume-import',
  volumeExport: 'volume-export',
  preMigrationSnapshot: 'pre-migration-snapshot',
  restoreInstance: 'restore-instance',
  deleteSnapshot: 'delete-snapshot',
} as const;

/** Workflow ids are derived from what they act on, so a second request for the same thing is visible. */
export function migrationWorkflowId(instanceId: string, targetHostId: string, nonce: string): string {
  return `migrate-${instanceId}-to-${targetHostId}-${nonce}`;
}
