import { open, rename } from "node:fs/promises";
import { join } from "node:path";
import { SECTOR } from "./sectors.js";

/**
 * What one volume must read back after a crash, kept by the driver (never by the server under test) and
 * persisted to a file with fsync whenever it changes, as reliability.md §c asks of an oracle.
 *
 * `tokens` is the durable content: per sector, the token of the last write acknowledged and followed by an
 * acknowledged flush. `pending` lists operations issued since the last durable point, acknowledged or not:
 * after a crash each of their sectors may read either the durable content or the content of one of them.
 */
export type PendingOp =
  | { kind: "data"; first: number; count: number; token: number }
  | { kind: "resize"; capacity: number }
  | { kind: "job"; job: string };

export class VolumeOracle {
  readonly tokens: Uint32Array;
  pending: PendingOp[] = [];
  /** Recent operations, for failure messages: what happened to a sector that reads wrong. */
  readonly history: { note: string; first?: number; count?: number }[] = [];

  constructor(
    readonly name: string,
    /** Written into every sector, so content from another volume is recognised. */
    readonly tag: number,
    public capacity: number,
    readonly maxCapacity: number,
    private readonly file: string,
    tokens?: Uint32Array,
  ) {
    this.tokens = new Uint32Array(maxCapacity / SECTOR);
    if (tokens) this.tokens.set(tokens.subarray(0, this.tokens.length));
  }

  static inDirectory(
    dir: string,
    name: string,
    tag: number,
    capacity: number,
    maxCapacity: number,
    tokens?: Uint32Array,
  ) {
    return new VolumeOracle(name, tag, capacity, maxCapacity, join(dir, `${name}.oracle.json`), tokens);
  }

  get sectors(): number {
    return this.capacity / SECTOR;
  }

  note(note: string, first?: number, count?: number): void {
    this.history.push({ note, ...(first === undefined ? {} : { first, count }) });
    if (this.history.length > 400) this.history.shift();
  }

  /** The recorded operations that touched `sector` (or changed the size), oldest first. */
  historyOf(sector: number): string[] {
    return this.history
      .filter((h) => h.first === undefined || (sector >= h.first && sector < h.first + (h.count ?? 0)))
      .map((h) => h.note);
  }

  /** Records an operation before it is sent, so a crash at any point finds it listed. */
  async begin(op: PendingOp): Promise<void> {
    this.pending.push(op);
    await this.save();
  }

  /** Everything pending was acknowledged and then flushed (or was itself a durable operation): apply it. */
  async durable(): Promise<void> {
    for (const op of this.pending) {
      if (op.kind === "data") this.tokens.fill(op.token, op.first, op.first + op.count);
      else if (op.kind === "resize") this.resizeTo(op.capacity);
    }
    this.pending = [];
    await this.save();
  }

  /** Capacities the volume may report after a crash now. */
  allowedCapacities(): Set<number> {
    const sizes = new Set([this.capacity]);
    for (const op of this.pending) if (op.kind === "resize") sizes.add(op.capacity);
    return sizes;
  }

  /** Tokens sector `s` may read after a crash now, given the capacity the volume came back with. */
  allowedTokens(sector: number): Set<number> {
    const allowed = new Set<number>([this.tokens[sector] ?? 0]);
    for (const op of this.pending) {
      if (op.kind === "data" && sector >= op.first && sector < op.first + op.count) allowed.add(op.token);
      // A shrink frees the tail before it writes the new size: cut short, the old size may come back with
      // part of the tail already reading as zeros (QEMU's shrink has the same order).
      if (op.kind === "resize" && sector * SECTOR >= op.capacity) allowed.add(0);
    }
    return allowed;
  }

  /** After a verified restart: what was read is now the durable state. */
  async settle(capacity: number, observed: Uint32Array): Promise<void> {
    this.tokens.fill(0);
    this.tokens.set(observed.subarray(0, capacity / SECTOR));
    this.capacity = capacity;
    this.pending = [];
    await this.save();
  }

  private resizeTo(capacity: number): void {
    // Past the end nothing survives: a later grow must read zeros there.
    if (capacity < this.capacity) this.tokens.fill(0, capacity / SECTOR);
    this.capacity = capacity;
  }

  /** Sectors as runs of equal tokens: a few hundred entries instead of one per sector. */
  private runs(): [number, number, number][] {
    const runs: [number, number, number][] = [];
    for (let s = 0; s < this.tokens.length; ) {
      const token = this.tokens[s] ?? 0;
      let e = s + 1;
      while (e < this.tokens.length && this.tokens[e] === token) e++;
      if (token !== 0) runs.push([s, e - s, token]);
      s = e;
    }
    return runs;
  }

  /** Write-to-temp, fsync, rename: a reader never sees a half-written oracle. */
  async save(): Promise<void> {
    const body = JSON.stringify({
      name: this.name,
      tag: this.tag,
      capacity: this.capacity,
      sector: SECTOR,
      runs: this.runs(),
      pending: this.pending,
    });
    const temp = `${this.file}.tmp`;
    const handle = await open(temp, "w");
    try {
      await handle.writeFile(body);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, this.file);
  }
}
