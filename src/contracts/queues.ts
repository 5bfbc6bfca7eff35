/** Inventory, placement and planning activities, and every workflow, run here. */
export const CONTROL_TASK_QUEUE = 'rehome-control';

/** Activities that read or write a host's data run on that host's own queue, served by its agent. */
export function hostTaskQueue(hostId: string): string {
  return `rehome-host-${hostId}`;
}
