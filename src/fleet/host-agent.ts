// STUB: replaced by the data-plane work.
export class HostAgent {
  constructor(readonly hostId: string) {}
}
