import { proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control-activities';
import type { HostActivities } from '../activities/host-activities';
import {
  assertFleetSpec,
  assertId,
  CONTROL_ACTIVITY_OPTIONS,
  formatBytes,
  hostActivityOptions,
  launchOf,
  LONG_HOST_ACTIVITY,
  Operation,
  reportFailure,
  showPhase,
  upsertVisibility,
  type FleetLayout,
  type FleetSpec,
  type InstanceLaunch,
} from '../contracts';

/**
 * Creates a simulated fleet: the inventory records hosts, instances and volumes (keyed by this
 * workflow, so a retry does not create a second fleet), then every host agent creates its volumes
 * and starts its instances, all hosts in parallel.
 */
export async function fleetInit(spec: FleetSpec): Promise<FleetLayout> {
  assertFleetSpec(spec);
  const key = assertId('workflow id (the fleet key)', workflowInfo().workflowId);
  return await reportFailure('fleet init', () => initFleet(key, spec));
}

async function initFleet(key: string, spec: FleetSpec): Promise<FleetLayout> {
  const control = proxyActivities<ControlActivities>(CONTROL_ACTIVITY_OPTIONS);
  upsertVisibility({ operation: Operation.fleetInit });
  showPhase(
    'planning',
    `**planning** ${spec.hosts} host(s), ${spec.instances} instance(s) of ${formatBytes(spec.volumeSizeBytes)}`,
  );
  const layout = await control.createFleet.executeWithOptions({ summary: `record fleet ${key}` }, [
    { key, spec },
  ]);

  const launchesByHost = groupLaunchesByHost(layout);
  showPhase(
    'launching',
    `**launching** ${layout.instances.length} instance(s) on ${launchesByHost.size} host(s), writing ${layout.volumes.length} volume image(s)`,
  );
  // Writing every image of a host can take minutes for big volumes; the agent heartbeats meanwhile.
  await Promise.all(
    [...launchesByHost].map(([hostId, launches]) =>
      proxyActivities<HostActivities>(hostActivityOptions(hostId)).launchInstances.executeWithOptions(
        { ...LONG_HOST_ACTIVITY, summary: `launch ${launches.length} instance(s) on ${hostId}` },
        [launches],
      ),
    ),
  );

  showPhase('marking', `**marking** ${layout.instances.length} instance(s) running in the inventory`);
  await control.markInstancesRunning.executeWithOptions({ summary: 'mark instances running' }, [
    { instanceIds: layout.instances.map((i) => i.instanceId) },
  ]);
  showPhase(
    'completed',
    `**completed** fleet of ${layout.hosts.length} host(s), ${layout.instances.length} instance(s), ${layout.volumes.length} volume(s)`,
  );
  return layout;
}

function groupLaunchesByHost(layout: FleetLayout): Map<string, InstanceLaunch[]> {
  const byHost = new Map<string, InstanceLaunch[]>();
  for (const instance of layout.instances) {
    const hostId = assertId('layout instance host', instance.hostId);
    const launch = launchOf(layout, instance);
    byHost.set(hostId, [...(byHost.get(hostId) ?? []), launch]);
  }
  return byHost;
}
