import { ApplicationFailure } from '@temporalio/common';
import * as fs from 'node:fs';
import {
  assertAbsolutePath,
  assertBandwidth,
  assertId,
  DEFAULT_BLOCK_SIZE,
  invalidInput,
  invalidState,
  MAX_VOLUME_BYTES,
  noCapacity,
  notFound,
  SECTOR_SIZE,
  type CommitMigrationInput,
  type FleetLayout,
  type FleetSpec,
  type InstanceRecord,
  type LiveMigrationInput,
  type MigrationPlan,
  type PlanVolumeImportInput,
  type ReservationRecord,
  type ReserveInput,
  type CommitVolumeInput,
  type VolumePlan,
  ErrorType,
  type VolumeRecord,
  forbidden,
  type DeleteSnapshotInput,
  type PreMigrationSnapshotInput,
  type RestoreInstanceInput,
  type RestorePlan,
  type SnapshotDeleteResult,
  type SnapshotInfo,
  type SnapshotPlan,
  type SnapshotRetainResult,
} from '../contracts';
import type { Inventory } from '../fleet/inventory';
import type { SnapshotStore } from '../fleet/snapshot-store';
import { isNoEnt } from '../fleet/atomic-file';
import { assertOutsideDataDir } from '../fleet/data-dir-guard';
import { formatExactBytes, pickHost, ZERO_RESOURCES } from '../planning/placement';

/**
 * Control-plane activities: inventory, placement and the snapshot store's catalogue. They never
 * touch a host's data.
 */
export function createControlActivities(inventory: Inventory, snapshots: SnapshotStore) {
  /** The instance, if `account` (when given) owns it; another account learns nothing more. */
  function ownedInstance(instanceId: string, account: string | undefined): InstanceRecord {
    const instance = inventory.requireInstance(instanceId);
    if (account !== undefined && instance.account !== assertId('account', account)) {
      throw forbidden(`instance ${instanceId} does not belong to account ${account}: use the owning account`);
    }
    return instance;
  }

  function requireRunning(instance: InstanceRecord, action: string): void {
    if (instance.state !== 'running') {
      throw invalidState(
        `instance ${instance.instanceId} is ${instance.state}, not running: only a running instance can ${action}`,
      );
    }
  }

  return {
    /** Checks a migration request against the inventory; bad requests fail non-retryable. */
    async planMigration(input: LiveMigrationInput): Promise<MigrationPlan> {
      const instanceId = assertId('instanceId', input?.instanceId);
      const targetHostId = assertId('targetHostId', input.targetHostId);
      // Only checked here, so a bad limit fails before anything is reserved; the workflow applies it.
      assertBandwidth(input.bandwidthBytesPerSec ?? 0);
      const instance = inventory.requireInstance(instanceId);
      inventory.requireHost(targetHostId);
      if (instance.hostId === targetHostId) {
        throw invalidInput(
          `instance ${instanceId} already runs on ${targetHostId}: choose another target host`,
        );
      }
      requireRunning(instance, 'be live-migrated (start it first)');
      return {
        instanceId,
        account: instance.account,
        sourceHostId: instance.hostId,
        targetHostId,
        resources: instance.shape,
        volumes: inventory.listVolumes({ instanceId }),
        workload: instance.workload,
      };
    },

    async reserveCapacity(input: ReserveInput): Promise<ReservationRecord> {
      assertId('hostId', input?.hostId);
      assertId('instanceId', input.instanceId);
      return inventory.reserve(input);
    },

    async releaseReservation(input: { key: string }): Promise<void> {
      inventory.release(input?.key);
    },

    /** Moves the instance and its volumes to the target and drops the reservation, in one transaction. */
    async commitMigration(input: CommitMigrationInput): Promise<void> {
      assertId('instanceId', input?.instanceId);
      assertId('sourceHostId', input.sourceHostId);
      assertId('targetHostId', input.targetHostId);
      inventory.commitMigration(input);
    },

    /** Records a new fleet (hosts, pending instances, volumes) keyed by the asking workflow. */
    async createFleet(input: { key: string; spec: FleetSpec }): Promise<FleetLayout> {
      return inventory.createFleet(input?.key, input.spec);
    },

    async markInstancesRunning(input: { instanceIds: string[] }): Promise<void> {
      if (!Array.isArray(input?.instanceIds))
        throw invalidInput('instanceIds must be a list of instance ids');
      input.instanceIds.forEach((id, n) => assertId(`instanceIds[${n}]`, id));
      inventory.markInstancesRunning(input.instanceIds);
    },

    /** Checks an image to import and names the volume it will become; changes nothing. */
    async planVolumeImport(input: PlanVolumeImportInput): Promise<VolumePlan> {
      const instanceId = assertId('instanceId', input?.instanceId);
      const file = assertOutsideDataDir('path', assertAbsolutePath('path', input.path), inventory.dataDir);
      const instance = inventory.requireInstance(instanceId);
      requireRunning(instance, 'take an imported volume');
      const stat = statOrUndefined(file);
      if (!stat) throw notFound(`no file at ${file}: check the image path`);
      if (!stat.isFile()) throw invalidInput(`${file} is not a regular file: import a raw disk image file`);
      const size = stat.size;
      if (size === 0) throw invalidInput(`${file} is empty: a volume needs at least ${SECTOR_SIZE} bytes`);
      if (size % SECTOR_SIZE !== 0) {
        const padded = Math.ceil(size / SECTOR_SIZE) * SECTOR_SIZE;
        throw invalidInput(
          `${file} is ${size} bytes, not a multiple of ${SECTOR_SIZE}: pad it with \`truncate -s ${padded} ${file}\``,
        );
      }
      if (size > MAX_VOLUME_BYTES) {
        throw invalidInput(
          `${file} is ${formatExactBytes(size)}, over the ${formatExactBytes(MAX_VOLUME_BYTES)} volume limit`,
        );
      }
      // Reserved, not just checked: a concurrent import cannot take the room while this image copies.
      try {
        inventory.reserve({
          key: input.key,
          hostId: instance.hostId,
          instanceId,
          resources: { ...ZERO_RESOURCES, diskBytes: size },
        });
      } catch (err) {
        if (!(err instanceof ApplicationFailure) || err.type !== ErrorType.NoCapacity) throw err;
        const free = inventory.hostUsage(instance.hostId).free.diskBytes;
        throw noCapacity(
          `host ${instance.hostId} has ${formatExactBytes(Math.max(0, free))} of disk free, the image needs ` +
            `${formatExactBytes(size)}: migrate instance ${instanceId} to a roomier host first or use a smaller image`,
        );
      }
      const volumeId = assertId('volumeId', `${instanceId}-v${nextVolumeIndex(inventory, instanceId)}`);
      return {
        volumeId,
        instanceId,
        hostId: instance.hostId,
        sizeBytes: size,
        blockSize: DEFAULT_BLOCK_SIZE,
        userData: !input.workloadWrites,
      };
    },

    /** Records an imported volume, counts its size in the instance's shape and drops its reservation; a retry is a no-op. */
    async commitVolume({ key, ...plan }: CommitVolumeInput): Promise<void> {
      inventory.addVolume({ ...plan, kind: 'instance-store' }, key);
    },

    async describeVolume(input: { volumeId: string }): Promise<VolumeRecord> {
      const volumeId = assertId('volumeId', input?.volumeId);
      return inventory.requireVolume(volumeId);
    },

    /** What a pre-migration snapshot covers: the instance's instance-store volumes, on its host. */
    async planSnapshot(
      input: Pick<PreMigrationSnapshotInput, 'instanceId' | 'account'>,
    ): Promise<SnapshotPlan> {
      const instanceId = assertId('instanceId', input?.instanceId);
      const instance = ownedInstance(instanceId, input.account);
      requireRunning(instance, 'be snapshotted (its host captures the volumes while it runs)');
      const volumes = [];
      for (const { volumeId, sizeBytes, blockSize, kind } of inventory.listVolumes({ instanceId })) {
        if (kind !== 'instance-store') continue;
        // Counted so the workflow can skip retention when this snapshot leaves it nothing to retire.
        const snapshotsHeld = (await snapshots.list({ account: instance.account, volumeId })).length;
        volumes.push({ volumeId, sizeBytes, blockSize, kind, snapshotsHeld });
      }
      return { instanceId, account: instance.account, hostId: instance.hostId, volumes };
    },

    /** Keeps the newest `keepLast` snapshots of the volume, deletes older ones and their chunks. */
    async retainSnapshots(input: {
      account: string;
      volumeId: string;
      keepLast: number;
    }): Promise<SnapshotRetainResult> {
      return snapshots.retain(input?.account, input.volumeId, input.keepLast);
    },

    /** Deletes a snapshot (owner only) and the chunks no other snapshot uses; a retry is a no-op. */
    async deleteSnapshot(input: DeleteSnapshotInput): Promise<SnapshotDeleteResult> {
      return snapshots.delete(input?.account, input.snapshotId);
    },

    async describeSnapshot(input: DeleteSnapshotInput): Promise<SnapshotInfo> {
      return snapshots.info(input?.account, input.snapshotId);
    },

    /**
     * Checks a restore and places it. Snapshots not given for some volume of the instance are taken
     * from the same event as the given ones, so one id restores a whole instance snapshotted together.
     */
    async planRestore(input: RestoreInstanceInput): Promise<RestorePlan> {
      const account = assertId('account', input?.account);
      if (!Array.isArray(input.snapshotIds) || input.snapshotIds.length === 0) {
        throw invalidInput('snapshotIds must list at least one snapshot id to restore from');
      }
      const given: SnapshotInfo[] = [];
      for (const [n, id] of input.snapshotIds.entries()) {
        given.push(await snapshots.info(account, assertId(`snapshotIds[${n}]`, id)));
      }
      const instanceId = given[0].instanceId;
      const other = given.find((s) => s.instanceId !== instanceId);
      if (other) {
        throw invalidInput(
          `snapshot ${other.snapshotId} is of instance ${other.instanceId}, not ${instanceId}: restore one instance at a time`,
        );
      }
      const instance = ownedInstance(instanceId, account);
      const avoid = (input.avoidHostIds ?? []).map((id, n) => assertId(`avoidHostIds[${n}]`, id));
      let hostId: string;
      if (input.targetHostId !== undefined && input.targetHostId !== null) {
        hostId = assertId('targetHostId', input.targetHostId);
        inventory.requireHost(hostId);
        if (hostId === instance.hostId) {
          throw invalidInput(
            `instance ${instanceId} is on ${hostId} already: a restore starts it on another host, so choose another --host`,
          );
        }
      } else {
        const picked = pickHost(inventory.hostLoads(), instance.shape, [instance.hostId, ...avoid]);
        if (!picked) {
          throw noCapacity(
            `no host other than ${[instance.hostId, ...avoid].join(', ')} has room for instance ${instanceId}: add capacity or name a host with --host`,
          );
        }
        hostId = picked;
      }
      const volumes: RestorePlan['volumes'] = [];
      for (const volume of inventory.listVolumes({ instanceId })) {
        let snapshot = given.find((s) => s.volumeId === volume.volumeId);
        if (!snapshot) {
          const events = new Set(given.map((s) => s.sourceEvent));
          snapshot = (await snapshots.list({ account, volumeId: volume.volumeId })).find((s) =>
            events.has(s.sourceEvent),
          );
        }
        if (!snapshot) {
          throw invalidInput(
            `volume ${volume.volumeId} of instance ${instanceId} has no snapshot among ${input.snapshotIds.join(', ')} nor from the same event: name one for it too`,
          );
        }
        if (snapshot.sizeBytes !== volume.sizeBytes || snapshot.blockSize !== volume.blockSize) {
          throw invalidState(
            `snapshot ${snapshot.snapshotId} holds ${snapshot.sizeBytes} bytes in ${snapshot.blockSize}-byte blocks, volume ${volume.volumeId} is ${volume.sizeBytes} in ${volume.blockSize}: it is not a snapshot of this volume as it is now`,
          );
        }
        const { volumeId, sizeBytes, blockSize, userData } = volume;
        volumes.push({ volumeId, sizeBytes, blockSize, userData, snapshotId: snapshot.snapshotId });
      }
      const stray = given.find((s) => !volumes.some((v) => v.snapshotId === s.snapshotId));
      if (stray) {
        throw invalidInput(
          `snapshot ${stray.snapshotId} is of volume ${stray.volumeId}, which instance ${instanceId} no longer has (or another snapshot was given for it)`,
        );
      }
      return {
        instanceId,
        account,
        fromHostId: instance.hostId,
        hostId,
        resources: instance.shape,
        workload: instance.workload,
        volumes,
      };
    },
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch (err) {
    if (isNoEnt(err)) return undefined;
    throw invalidInput(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** One past the highest `<instanceId>-v<n>`, so a new volume never reuses an id. */
function nextVolumeIndex(inventory: Inventory, instanceId: string): number {
  const prefix = `${instanceId}-v`;
  let next = 0;
  for (const v of inventory.listVolumes({ instanceId })) {
    const suffix = v.volumeId.startsWith(prefix) ? v.volumeId.slice(prefix.length) : '';
    if (/^\d+$/.test(suffix)) next = Math.max(next, Number(suffix) + 1);
  }
  return next;
}
