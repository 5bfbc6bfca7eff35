import { setCurrentDetails, upsertSearchAttributes } from '@temporalio/workflow';
import { AccountKey, HostIdKey, InstanceIdKey, OperationKey, PhaseKey, type Visibility } from '../contracts';

// The typed-key form of the upsert argument (the other, untyped record form is deprecated).
type UpdatePairs = Extract<Parameters<typeof upsertSearchAttributes>[0], unknown[]>;

export function upsertVisibility(v: Partial<Visibility>): void {
  const pairs: UpdatePairs = [];
  if (v.operation !== undefined) pairs.push({ key: OperationKey, value: v.operation });
  if (v.instanceId !== undefined) pairs.push({ key: InstanceIdKey, value: v.instanceId });
  if (v.hostId !== undefined) pairs.push({ key: HostIdKey, value: v.hostId });
  if (v.account !== undefined) pairs.push({ key: AccountKey, value: v.account });
  if (v.phase !== undefined) pairs.push({ key: PhaseKey, value: v.phase });
  if (pairs.length > 0) upsertSearchAttributes(pairs);
}

/** Phase as a search attribute (for queries) and as current details (for the one-line view). */
export function showPhase(phase: string, details: string): void {
  upsertVisibility({ phase });
  setCurrentDetails(details);
}
