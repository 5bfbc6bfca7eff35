/**
 * What an instance's workload (and export) sees of a volume: a plain image on its host, or, during
 * a post-sync, the target replica that reads through to the source. Offsets are bytes.
 */
export interface BlockDevice {
  readonly volumeId: string;
  readonly sizeBytes: number;
  readonly blockSize: number;
  /** `into`, when given and large enough, receives the bytes (the result is a view of it): no allocation. */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  close(): Promise<void>;
}
