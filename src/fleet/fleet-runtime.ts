import { assertId } from '../contracts/ids';
import { localBlockSource, type BlockSource } from './block-source';
import { HostAgent, type HostAgentOptions, type HostPeers } from './host-agent';
import { HostStore } from './host-store';

export interface FleetRuntimeOptions extends HostAgentOptions {
  dataDir: string;
}

/**
 * The host agents served by this process, and how they reach each other: a host's data is always
 * readable from the shared data directory; its agent only if this process runs it.
 */
export class FleetRuntime implements HostPeers {
  readonly dataDir: string;
  private readonly options: FleetRuntimeOptions;
  private readonly starting = new Map<string, Promise<HostAgent>>();
  private readonly agents = new Map<string, HostAgent>();
  private closed = false;

  constructor(options: FleetRuntimeOptions) {
    this.options = options;
    this.dataDir = options.dataDir;
  }

  /** The agent of a host, created and started (resuming its running instances) on first use. */
  host(hostId: string): Promise<HostAgent> {
    assertId('hostId', hostId);
    if (this.closed) return Promise.reject(new Error('fleet runtime is closed'));
    let agent = this.starting.get(hostId);
    if (!agent) {
      agent = this.startAgent(hostId);
      this.starting.set(hostId, agent);
      agent.catch(() => this.starting.delete(hostId));
    }
    return agent;
  }

  private async startAgent(hostId: string): Promise<HostAgent> {
    const { dataDir, ...agentOptions } = this.options;
    const agent = new HostAgent(dataDir, hostId, this, agentOptions);
    // Registered before start: a resuming target reads through to its source, which may be this process too.
    this.agents.set(hostId, agent);
    try {
      await agent.start();
    } catch (err) {
      this.agents.delete(hostId);
      await agent.close();
      throw err;
    }
    return agent;
  }

  /** The agent of a host served by this process, if it is. */
  localAgent(hostId: string): HostAgent | undefined {
    return this.agents.get(hostId);
  }

  /** Reads another host's images directly: every host's data lives under the same data directory. */
  blockSource(hostId: string): BlockSource {
    return localBlockSource(this.agents.get(hostId)?.store ?? new HostStore(this.dataDir, hostId));
  }

  async close(): Promise<void> {
    this.closed = true;
    const starting = [...this.starting.values()];
    this.starting.clear();
    for (const agent of starting) {
      const started = await agent.catch(() => undefined);
      await started?.close();
    }
    this.agents.clear();
  }
}
