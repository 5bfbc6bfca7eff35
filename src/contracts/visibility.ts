import type { SearchAttributePair } from '@temporalio/common';
import { isCancellation, setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import { errorMessage, surfaceFailure } from './errors';
import { AccountKey, HostIdKey, InstanceIdKey, OperationKey, PhaseKey } from './search-attributes';

/** What operators filter on in the Web UI (`InstanceId = "i-3"`): set at start by clients, upserted by workflows. */
export interface Visibility {
  operation: string;
  instanceId?: string;
  hostId?: string;
  account?: string;
  phase?: string;
}

/** The typed search attributes for what is known; unknown fields are left out (and left as they are). */
export function visibilityPairs(v: Partial<Visibility>): SearchAttributePair[] {
  const pairs: SearchAttributePair[] = [];
  if (v.operation) pairs.push({ key: OperationKey, value: v.operation });
  if (v.instanceId) pairs.push({ key: InstanceIdKey, value: v.instanceId });
  if (v.hostId) pairs.push({ key: HostIdKey, value: v.hostId });
  if (v.account) pairs.push({ key: AccountKey, value: v.account });
  if (v.phase) pairs.push({ key: PhaseKey, value: v.phase });
  return pairs;
}

// The three below run inside workflows only (they call the workflow runtime).

export function upsertVisibility(v: Partial<Visibility>): void {
  const pairs = visibilityPairs(v);
  if (pairs.length > 0) upsertSearchAttributes(pairs);
}

/** Phase as a search attribute (for queries) and as current details (for the one-line view). */
export function showPhase(phase: string, details: string): void {
  upsertVisibility({ phase });
  setCurrentDetails(details);
}

/** Runs a workflow's body; a failure or cancel is shown as its final phase and surfaces its own message. */
export async function reportFailure<T>(what: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (err) {
    const why = isCancellation(err) ? 'cancelled' : 'failed';
    showPhase(why, `**${why}** ${what}: ${errorMessage(err)}`);
    throw surfaceFailure(err);
  }
}
