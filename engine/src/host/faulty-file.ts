import type { IoOptions } from "../types.js";
import { FaultPlan, type FaultSpec } from "./fault-plan.js";
import type { HostCapabilities, HostFile, LockMode } from "./host-file.js";

/**
 * Any HostFile — the real node file included — with injected faults (reliability.md T4), so a whole
 * server can be driven into the error paths of the engine on real files that qemu-img can then check.
 * A faulted call fails before it reaches the wrapped file, so the file holds exactly what the engine
 * wrote up to the fault. An injected fsync failure is permanent, as a real one is (HostFile.flush).
 */
export interface FaultyFile extends HostFile {
  readonly inner: HostFile;
  injectFault(fault: FaultSpec): void;
  /** Disarms the faults; a handle whose flush failed stays dead. */
  clearFaults(): void;
  readonly faultsFired: number;
  /** Calls per write point name (IoOptions.point; a flush without one counts as "flush"). */
  readonly points: Readonly<Record<string, number>>;
}

export function withFaults(inner: HostFile): FaultyFile {
  return new FaultInjectingFile(inner);
}

class FaultInjectingFile implements FaultyFile {
  private readonly plan = new FaultPlan();
  readonly points: Record<string, number> = {};

  constructor(readonly inner: HostFile) {}

  get readOnly(): boolean {
    return this.inner.readOnly;
  }

  get capabilities(): HostCapabilities {
    return this.inner.capabilities;
  }

  get faultsFired(): number {
    return this.plan.faultsFired;
  }

  injectFault(fault: FaultSpec): void {
    this.plan.inject(fault);
  }

  clearFaults(): void {
    this.plan.clear();
  }

  size(): Promise<number> {
    return this.inner.size();
  }

  allocatedBytes(): Promise<number> {
    return this.inner.allocatedBytes();
  }

  async read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<number> {
    this.plan.fire("read", offset, into.length, opts?.point);
    return this.inner.read(offset, into, opts);
  }

  async readFull(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void> {
    this.plan.fire("read", offset, into.length, opts?.point);
    return this.inner.readFull(offset, into, opts);
  }

  async write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    this.beforeChange(offset, data.length, opts?.point);
    // FUA goes through this file's flush, so a flush fault (and the dead handle it leaves) applies to it.
    await this.inner.write(offset, data, withoutFua(opts));
    if (opts?.fua) await this.flush({ point: fuaPoint(opts.point) });
  }

  async writev(offset: number, buffers: readonly Uint8Array[], opts?: IoOptions): Promise<void> {
    const total = buffers.reduce((sum, b) => sum + b.length, 0);
    this.beforeChange(offset, total, opts?.point);
    await this.inner.writev(offset, buffers, withoutFua(opts));
    if (opts?.fua) await this.flush({ point: fuaPoint(opts.point) });
  }

  async truncate(size: number): Promise<void> {
    const current = await this.inner.size();
    this.beforeChange(Math.min(size, current), Math.abs(size - current));
    return this.inner.truncate(size);
  }

  async flush(opts?: IoOptions): Promise<void> {
    const point = opts?.point ?? "flush";
    this.count(point);
    this.plan.fireFlush(point);
    return this.inner.flush(opts);
  }

  async allocate(offset: number, length: number, keepSize?: boolean): Promise<void> {
    this.beforeChange(offset, length);
    return this.inner.allocate(offset, length, keepSize);
  }

  async punchHole(offset: number, length: number): Promise<void> {
    this.beforeChange(offset, length);
    return this.inner.punchHole(offset, length);
  }

  async zeroRange(offset: number, length: number, keepSize?: boolean): Promise<void> {
    this.beforeChange(offset, length);
    return this.inner.zeroRange(offset, length, keepSize);
  }

  seekData(offset: number): Promise<number | null> {
    return this.inner.seekData(offset);
  }

  seekHole(offset: number): Promise<number> {
    return this.inner.seekHole(offset);
  }

  lockImage(mode: LockMode): Promise<void> {
    return this.inner.lockImage(mode);
  }

  unlockImage(): Promise<void> {
    return this.inner.unlockImage();
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  private beforeChange(offset: number, length: number, point?: string): void {
    if (this.plan.deadHandle) throw this.plan.deadHandle;
    if (point !== undefined) this.count(point);
    this.plan.fire("write", offset, length, point);
  }

  private count(point: string): void {
    this.points[point] = (this.points[point] ?? 0) + 1;
  }
}

function withoutFua(opts: IoOptions | undefined): IoOptions | undefined {
  if (!opts?.fua) return opts;
  const { fua: _fua, ...rest } = opts;
  return rest;
}

function fuaPoint(point: string | undefined): string {
  return point === undefined ? "flush" : `${point}.fua`;
}
