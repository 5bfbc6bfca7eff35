import type { FileRef } from './file-range';

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
  /**
   * The image file, when the device is one plain file (a replica that reads through to its source
   * is not): a point-in-time capture lends its bytes in place rather than reading them.
   */
  readonly file?: FileRef;
  close(): Promise<void>;
}
