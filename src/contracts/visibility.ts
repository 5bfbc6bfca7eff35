/** What operators filter on in the Web UI (`InstanceId = "i-3"`): set at start by clients, upserted by workflows. */
export interface Visibility {
  operation: string;
  instanceId?: string;
  hostId?: string;
  account?: string;
  phase?: string;
}
