import type {
  CommitMigrationInput,
  FleetLayout,
  FleetSpec,
  LiveMigrationInput,
  MigrationPlan,
  PlanVolumeImportInput,
  ReservationRecord,
  ReserveInput,
  VolumePlan,
  VolumeRecord,
} from '../contracts';
import type { Inventory } from '../fleet/inventory';

/** Control-plane activities: inventory and placement. They never touch a host's data. */
// STUB: signatures agreed; implementation owned by the inventory work.
export function createControlActivities(inventory: Inventory) {
  const todo = (): never => {
    throw new Error(`not implemented (${typeof inventory})`);
  };
  return {
    /** Checks a migration request against the inventory; bad requests fail non-retryable. */
    async planMigration(_input: LiveMigrationInput): Promise<MigrationPlan> {
      return todo();
    },
    async reserveCapacity(_input: ReserveInput): Promise<ReservationRecord> {
      return todo();
    },
    async releaseReservation(_input: { key: string }): Promise<void> {
      return todo();
    },
    /** Moves the instance and its volumes to the target and drops the reservation, in one transaction. */
    async commitMigration(_input: CommitMigrationInput): Promise<void> {
      return todo();
    },
    /** Records a new fleet (hosts, pending instances, volumes) keyed by the asking workflow. */
    async createFleet(_input: { key: string; spec: FleetSpec }): Promise<FleetLayout> {
      return todo();
    },
    async markInstancesRunning(_input: { instanceIds: string[] }): Promise<void> {
      return todo();
    },
    async planVolumeImport(_input: PlanVolumeImportInput): Promise<VolumePlan> {
      return todo();
    },
    async commitVolume(_input: VolumePlan): Promise<void> {
      return todo();
    },
    async describeVolume(_input: { volumeId: string }): Promise<VolumeRecord> {
      return todo();
    },
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
