import fs from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import type { Command } from 'commander';
import { CONTROL_TASK_QUEUE } from '../contracts';
import { INVENTORY_FILE, openInventory, type Inventory } from '../fleet/inventory';
import { connectClient, dataDir, resolveTemporal, type TemporalTarget } from '../temporal/connection';

export interface GlobalOptions {
  json?: boolean;
  dataDir?: string;
}

// Proto enum values (temporal.api.enums.v1): kept literal so the CLI needs no direct proto dependency.
const TASK_QUEUE_KIND_NORMAL = 1;
const TASK_QUEUE_TYPE_WORKFLOW = 1;
/** Pollers long-poll for about a minute; one not seen for longer than this has gone. */
const POLLER_FRESH_MS = 2 * 60_000;

/** What every command needs, opened on first use and closed once at the end. */
export class CliContext {
  readonly json: boolean;
  readonly dataDir: string;
  private cachedTarget?: TemporalTarget;
  private cachedClient?: Promise<Client>;
  private cachedInventory?: Inventory;

  constructor(options: GlobalOptions) {
    this.json = options.json ?? false;
    this.dataDir = dataDir(options.dataDir);
  }

  /** Every context a command opened, so the entry point can close them whatever happened. */
  static readonly opened: CliContext[] = [];

  static of(command: Command): CliContext {
    const ctx = new CliContext(command.optsWithGlobals<GlobalOptions>());
    CliContext.opened.push(ctx);
    return ctx;
  }

  get target(): TemporalTarget {
    this.cachedTarget ??= resolveTemporal({ dataDir: this.dataDir });
    return this.cachedTarget;
  }

  client(): Promise<Client> {
    this.cachedClient ??= connectClient(this.target);
    return this.cachedClient;
  }

  /** The inventory the workers keep; an error (not an empty new one) when this data dir has none. */
  inventory(): Inventory {
    if (!this.cachedInventory) {
      if (!fs.existsSync(path.join(this.dataDir, INVENTORY_FILE))) {
        throw new Error(
          `no fleet in ${this.dataDir}: create one with \`rehome fleet init --hosts 4 --instances 8 --volume-size 256MiB\` (or pass --data-dir)`,
        );
      }
      this.cachedInventory = openInventory(this.dataDir);
    }
    return this.cachedInventory;
  }

  /** The inventory if this data dir has one: lookups that only improve a summary use this. */
  maybeInventory(): Inventory | undefined {
    try {
      return this.inventory();
    } catch {
      return undefined;
    }
  }

  /** A workflow started with nobody polling would just sit there: say so before starting it. */
  async requireWorker(): Promise<void> {
    const client = await this.client();
    const response = await client.workflowService.describeTaskQueue({
      namespace: this.target.namespace,
      taskQueue: { name: CONTROL_TASK_QUEUE, kind: TASK_QUEUE_KIND_NORMAL },
      taskQueueType: TASK_QUEUE_TYPE_WORKFLOW,
    });
    const now = Date.now();
    const fresh = (response.pollers ?? []).filter((p) => {
      const seconds = Number(p.lastAccessTime?.seconds ?? 0);
      return seconds === 0 || now - seconds * 1000 < POLLER_FRESH_MS;
    });
    if (fresh.length === 0) {
      throw new Error(
        `no rehome worker is running: start \`npx rehome up\` (or \`npm run worker\`) against ${this.target.address}`,
      );
    }
  }

  /** Human output (suppressed with --json). */
  say(text: string): void {
    if (!this.json) console.log(text);
  }

  /** Machine output: one JSON document on stdout, only with --json. */
  emit(value: unknown): void {
    if (this.json) console.log(JSON.stringify(value, null, 2));
  }

  async close(): Promise<void> {
    this.cachedInventory?.close();
    if (this.cachedClient) {
      const client = await this.cachedClient.catch(() => undefined);
      await client?.connection.close();
    }
  }
}
