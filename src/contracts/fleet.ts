/** Shapes of the simulated fleet, shared by the inventory, host agents, workflows and the CLI. */

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

/** Unit of sync tracking: the bitmap holds one entry per block. */
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
/** Volumes are sector-addressed like real disks: sizes must be a multiple of this. */
export const SECTOR_SIZE = 512;
/** Largest volume rehome accepts (a sanity bound for bad input, not a design limit). */
export const MAX_VOLUME_BYTES = 16 * 1024 * GiB;

/** Blocks in a volume; the last one may be partial. */
export function blockCountOf(v: { sizeBytes: number; blockSize: number }): number {
  return Math.ceil(v.sizeBytes / v.blockSize);
}

export interface Resources {
  vcpu: number;
  memoryMiB: number;
  diskBytes: number;
}

export interface HostRecord {
  hostId: string;
  zone: string;
  capacity: Resources;
}

export type InstanceState = 'pending' | 'running' | 'stopped';

export interface WorkloadConfig {
  /** Bytes per second the synthetic workload writes; 0 keeps it idle. */
  writeBytesPerSec: number;
  /** Size of each write, a multiple of 512 (default 4096). */
  writeSize: number;
}

// 8 KiB writes: smaller than a block, so writes during a sync exercise fetch-before-partial-write.
export const DEFAULT_WORKLOAD: WorkloadConfig = { writeBytesPerSec: 2 * MiB, writeSize: 8192 };

export interface VolumeRecord {
  volumeId: string;
  instanceId: string;
  hostId: string;
  sizeBytes: number;
  blockSize: number;
  /** Instance-store volumes live on the host's local disk and die with it. */
  kind: 'instance-store';
  /** True for volumes holding user data (imported images): the synthetic workload leaves them alone. */
  userData: boolean;
}

export interface InstanceRecord {
  instanceId: string;
  account: string;
  hostId: string;
  shape: Resources;
  state: InstanceState;
  tags: Record<string, string>;
  workload: WorkloadConfig;
}

export interface ReservationRecord {
  key: string;
  hostId: string;
  instanceId: string;
  resources: Resources;
}

export interface FleetSpec {
  hosts: number;
  instances: number;
  volumeSizeBytes: number;
  /** Accounts instances are spread over (round robin). */
  accounts?: string[];
  workload?: WorkloadConfig;
  /** Capacity of every host; default sized so each host can take its share of instances twice over. */
  hostCapacity?: Resources;
  /** vCPU and memory of every instance (disk comes from volumeSizeBytes); default 2 vCPU, 4096 MiB. */
  instanceShape?: Pick<Resources, 'vcpu' | 'memoryMiB'>;
}

export interface FleetLayout {
  hosts: HostRecord[];
  instances: InstanceRecord[];
  volumes: VolumeRecord[];
}

/** What a host agent needs to run (or receive) one instance. */
export interface InstanceLaunch {
  instanceId: string;
  account: string;
  volumes: Pick<VolumeRecord, 'volumeId' | 'sizeBytes' | 'blockSize' | 'userData'>[];
  workload: WorkloadConfig;
}

/** How fleetInit launches one instance of a layout on its host. */
export function launchOf(layout: FleetLayout, instance: InstanceRecord): InstanceLaunch {
  return {
    instanceId: instance.instanceId,
    account: instance.account,
    volumes: layout.volumes
      .filter((v) => v.instanceId === instance.instanceId)
      .map(({ volumeId, sizeBytes, blockSize, userData }) => ({ volumeId, sizeBytes, blockSize, userData })),
    workload: instance.workload,
  };
}

export interface VolumeImportInput {
  instanceId: string;
  /** Absolute path of a raw image readable by the workers (same machine). */
  path: string;
  /** Let the synthetic workload write to it (default false: imported data is the user's). */
  workloadWrites?: boolean;
}

export interface VolumeImportResult {
  volumeId: string;
  instanceId: string;
  hostId: string;
  sizeBytes: number;
  sha256: string;
}

export interface VolumeExportInput {
  volumeId: string;
  /** Absolute path to write the raw image to. */
  path: string;
}

export interface VolumeExportResult {
  volumeId: string;
  hostId: string;
  path: string;
  sizeBytes: number;
  sha256: string;
}
