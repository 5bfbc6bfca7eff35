import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const InstanceIdKey = defineSearchAttributeKey('InstanceId', SearchAttributeType.KEYWORD);
/** The host the operation acts on: for a migration, the target (the source is in the memo and result). */
export const HostIdKey = defineSearchAttributeKey('HostId', SearchAttributeType.KEYWORD);
export const AccountKey = defineSearchAttributeKey('Account', SearchAttributeType.KEYWORD);
export const OperationKey = defineSearchAttributeKey('Operation', SearchAttributeType.KEYWORD);
export const PhaseKey = defineSearchAttributeKey('Phase', SearchAttributeType.KEYWORD);

/** Registered on the embedded dev server at start (`--search-attribute Name=Type`). */
export const SEARCH_ATTRIBUTES: Record<string, 'Keyword'> = {
  InstanceId: 'Keyword',
  HostId: 'Keyword',
  Account: 'Keyword',
  Operation: 'Keyword',
  Phase: 'Keyword',
};
