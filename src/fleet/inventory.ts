// STUB: replaced by the inventory work.
export class Inventory {}
