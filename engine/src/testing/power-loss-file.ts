import { EngineError } from "../errors.js";
import type { HostCapabilities, HostFile, LockMode } from "../host/host-file.js";
import { createMemoryFile, type MemoryFile } from "../host/memory-file.js";
import type { IoOptions } from "../types.js";
import { rng } from "./random.js";

/**
 * A HostFile that simulates power loss the way SQLite's crash VFS does (src/test6.c, reliability.md
 * S26): every change since the last flush sits in a write list; `crash()` produces the bytes the disk
 * could hold afterwards. The durable image only changes at flush, so anything not flushed is at the
 * mercy of the crash mode:
 *   keep — every pending change reached the disk (a kill -9: the page cache survives),
 *   drop — none did,
 *   torn — a random subset did, in issue order, and one of them only partly: a random subset of its
 *          512-byte sectors (sectors themselves are atomic).
 * Reads see every change, as the page cache would. `cutPowerAfter(n)` makes the n-th later mutating call
 * (or flush) and everything after it fail, so a crash can land in the middle of an operation.
 */

export type CrashMode = "keep" | "drop" | "torn";

export interface PowerLossFile extends HostFile {
  /** Post-crash contents of the file. Does not change this file; call as often as wanted. */
  crash(opts: { mode: CrashMode; seed: number }): Promise<Uint8Array>;
  /** After `calls` more writes/flushes succeed, the next one and every later call fails with EIO. */
  cutPowerAfter(calls: number): void;
  readonly powerLost: boolean;
  /** Changes issued since the last completed flush. */
  readonly pendingCount: number;
  /** Mutating calls (writes, truncates, fallocate modes, flushes) issued so far. */
  readonly mutatingCalls: number;
}

export const CRASH_SECTOR = 512;

type Pending =
  | { kind: "write"; offset: number; data: Uint8Array }
  | { kind: "zero"; offset: number; length: number; keepSize: boolean }
  | { kind: "truncate"; size: number }
  | { kind: "extend"; size: number };

export function createPowerLossFile(opts: { data?: Uint8Array } = {}): PowerLossFile {
  return new PowerLossHostFile(opts.data);
}

class PowerLossHostFile implements PowerLossFile {
  readonly readOnly = false;
  readonly capabilities: HostCapabilities;
  /** What the application sees (all changes applied). */
  private readonly view: MemoryFile;
  /** What survived the last flush. */
  private durable: MemoryFile;
  private pending: Pending[] = [];
  private calls = 0;
  private cutAt: number | undefined;
  powerLost = false;

  constructor(data?: Uint8Array) {
    this.view = createMemoryFile(data ? { data } : {});
    this.durable = createMemoryFile(data ? { data } : {});
    this.capabilities = this.view.capabilities;
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  get mutatingCalls(): number {
    return this.calls;
  }

  cutPowerAfter(calls: number): void {
    this.cutAt = this.calls + calls;
  }

  async crash(opts: { mode: CrashMode; seed: number }): Promise<Uint8Array> {
    const after = createMemoryFile({ data: this.durable.contents() });
    const random = rng(opts.seed);
    let survivors: Pending[] = this.pending;
    if (opts.mode === "drop") survivors = [];
    if (opts.mode === "torn") {
      const tornIndex = this.pending.length > 0 ? Math.floor(random() * this.pending.length) : -1;
      survivors = [];
      for (const [i, p] of this.pending.entries()) {
        if (i === tornIndex) survivors.push(...tornSectors(p, random));
        else if (random() < 0.5) survivors.push(p);
      }
    }
    for (const p of survivors) await apply(after, p);
    return after.contents();
  }

  /** Counts a mutating call; fails it if the power is (now) off. */
  private gate(): void {
    if (!this.powerLost && this.cutAt !== undefined && this.calls >= this.cutAt) this.powerLost = true;
    if (this.powerLost) {
      throw EngineError.from(Object.assign(new Error("power lost"), { code: "EIO" }));
    }
    this.calls++;
  }

  private checkPowerForRead(): void {
    if (this.powerLost) throw EngineError.from(Object.assign(new Error("power lost"), { code: "EIO" }));
  }

  async size(): Promise<number> {
    this.checkPowerForRead();
    return this.view.size();
  }

  allocatedBytes(): Promise<number> {
    return this.view.allocatedBytes();
  }

  async read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<number> {
    this.checkPowerForRead();
    return this.view.read(offset, into, opts);
  }

  async readFull(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void> {
    this.checkPowerForRead();
    return this.view.readFull(offset, into, opts);
  }

  async write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    this.gate();
    await this.view.write(offset, data, { ...opts, fua: false });
    this.pending.push({ kind: "write", offset, data: data.slice() });
    if (opts?.fua) await this.flush(opts);
  }

  async writev(offset: number, buffers: readonly Uint8Array[], opts?: IoOptions): Promise<void> {
    const total = buffers.reduce((sum, b) => sum + b.length, 0);
    const joined = new Uint8Array(total);
    let at = 0;
    for (const b of buffers) {
      joined.set(b, at);
      at += b.length;
    }
    await this.write(offset, joined, opts);
  }

  async truncate(size: number): Promise<void> {
    this.gate();
    await this.view.truncate(size);
    this.pending.push({ kind: "truncate", size });
  }

  async flush(_opts?: IoOptions): Promise<void> {
    this.gate();
    for (const p of this.pending) await apply(this.durable, p);
    this.pending = [];
  }

  async allocate(offset: number, length: number, keepSize = false): Promise<void> {
    this.gate();
    await this.view.allocate(offset, length, keepSize);
    if (!keepSize && length > 0) this.pending.push({ kind: "extend", size: offset + length });
  }

  async punchHole(offset: number, length: number): Promise<void> {
    this.gate();
    await this.view.punchHole(offset, length);
    if (length > 0) this.pending.push({ kind: "zero", offset, length, keepSize: true });
  }

  async zeroRange(offset: number, length: number, keepSize = false): Promise<void> {
    this.gate();
    await this.view.zeroRange(offset, length, keepSize);
    if (length > 0) this.pending.push({ kind: "zero", offset, length, keepSize });
  }

  seekData(offset: number): Promise<number | null> {
    return this.view.seekData(offset);
  }

  seekHole(offset: number): Promise<number> {
    return this.view.seekHole(offset);
  }

  async lockImage(_mode: LockMode): Promise<void> {}
  async unlockImage(): Promise<void> {}

  async close(): Promise<void> {
    // Closing is not a flush: whatever is pending stays at the mercy of a crash.
  }
}

/** What reaches the disk of a change torn by the crash: a random subset of its 512-byte sectors. */
function tornSectors(p: Pending, random: () => number): Pending[] {
  if (p.kind !== "write" || p.data.length === 0) return random() < 0.5 ? [p] : [];
  const out: Pending[] = [];
  const first = Math.floor(p.offset / CRASH_SECTOR);
  const last = Math.floor((p.offset + p.data.length - 1) / CRASH_SECTOR);
  for (let s = first; s <= last; s++) {
    if (random() < 0.5) continue;
    const a = Math.max(p.offset, s * CRASH_SECTOR);
    const b = Math.min(p.offset + p.data.length, (s + 1) * CRASH_SECTOR);
    out.push({ kind: "write", offset: a, data: p.data.subarray(a - p.offset, b - p.offset) });
  }
  return out;
}

async function apply(file: MemoryFile, p: Pending): Promise<void> {
  switch (p.kind) {
    case "write":
      return file.write(p.offset, p.data);
    case "zero":
      return file.zeroRange(p.offset, p.length, p.keepSize);
    case "truncate":
      return file.truncate(p.size);
    case "extend":
      if ((await file.size()) < p.size) await file.truncate(p.size);
      return;
  }
}
