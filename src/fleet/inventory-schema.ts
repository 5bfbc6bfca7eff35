/**
 * SQL of the inventory. Bump SCHEMA_VERSION and add a step to `migrateSchema` when a table changes,
 * so a data directory made by an older rehome keeps working.
 */
export const SCHEMA_VERSION = 1;

export const SCHEMA_V1 = `
CREATE TABLE IF NOT EXISTS hosts (
  id         TEXT PRIMARY KEY,
  zone       TEXT NOT NULL,
  vcpu       INTEGER NOT NULL CHECK (vcpu >= 0),
  memory_mib INTEGER NOT NULL CHECK (memory_mib >= 0),
  disk_bytes INTEGER NOT NULL CHECK (disk_bytes >= 0)
);

CREATE TABLE IF NOT EXISTS instances (
  id         TEXT PRIMARY KEY,
  account    TEXT NOT NULL,
  host_id    TEXT NOT NULL REFERENCES hosts(id),
  vcpu       INTEGER NOT NULL CHECK (vcpu >= 0),
  memory_mib INTEGER NOT NULL CHECK (memory_mib >= 0),
  disk_bytes INTEGER NOT NULL CHECK (disk_bytes >= 0),
  state      TEXT NOT NULL CHECK (state IN ('pending', 'running', 'stopped')),
  tags       TEXT NOT NULL DEFAULT '{}',
  workload   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_host ON instances(host_id);

CREATE TABLE IF NOT EXISTS volumes (
  id          TEXT PRIMARY KEY,
  instance_id TEXT NOT NULL REFERENCES instances(id),
  host_id     TEXT NOT NULL REFERENCES hosts(id),
  size_bytes  INTEGER NOT NULL CHECK (size_bytes > 0),
  block_size  INTEGER NOT NULL CHECK (block_size > 0),
  kind        TEXT NOT NULL,
  user_data   INTEGER NOT NULL CHECK (user_data IN (0, 1))
);
CREATE INDEX IF NOT EXISTS volumes_instance ON volumes(instance_id);

-- instance_id is not a foreign key: a clone reserves room for an instance that does not exist yet.
CREATE TABLE IF NOT EXISTS reservations (
  key         TEXT PRIMARY KEY,
  host_id     TEXT NOT NULL REFERENCES hosts(id),
  instance_id TEXT NOT NULL,
  vcpu        INTEGER NOT NULL CHECK (vcpu >= 0),
  memory_mib  INTEGER NOT NULL CHECK (memory_mib >= 0),
  disk_bytes  INTEGER NOT NULL CHECK (disk_bytes >= 0),
  created_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_host ON reservations(host_id);

CREATE TABLE IF NOT EXISTS fleet_inits (
  key        TEXT PRIMARY KEY,
  layout     TEXT NOT NULL,
  created_at TEXT NOT NULL
);
`;

export interface HostRow {
  id: string;
  zone: string;
  vcpu: number;
  memory_mib: number;
  disk_bytes: number;
}

export interface InstanceRow {
  id: string;
  account: string;
  host_id: string;
  vcpu: number;
  memory_mib: number;
  disk_bytes: number;
  state: string;
  tags: string;
  workload: string;
}

export interface VolumeRow {
  id: string;
  instance_id: string;
  host_id: string;
  size_bytes: number;
  block_size: number;
  kind: string;
  user_data: number;
}

export interface ReservationRow {
  key: string;
  host_id: string;
  instance_id: string;
  vcpu: number;
  memory_mib: number;
  disk_bytes: number;
  created_at: string;
}

export interface FleetInitRow {
  key: string;
  layout: string;
  created_at: string;
}
