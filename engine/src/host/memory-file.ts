import { EngineError, throwIfAborted } from "../errors.js";
import type { IoOptions } from "../types.js";
import { checkRange, type FallocateCapability, readOnlyError, unsupportedError } from "./checks.js";
import { FaultPlan, type FaultSpec } from "./fault-plan.js";
import type { HostCapabilities, HostFile, LockMode } from "./host-file.js";

/**
 * A sparse in-memory HostFile for tests: contents live in 64 KiB chunks that exist only where something was
 * written or allocated, so SEEK_DATA/SEEK_HOLE and allocatedBytes behave like a file system with 64 KiB
 * blocks. Faults can be injected to exercise error paths the way QEMU's blkdebug does.
 */

const CHUNK = 64 * 1024;

export interface MemoryFileStats {
  reads: number;
  writes: number;
  flushes: number;
  bytesRead: number;
  bytesWritten: number;
  faultsFired: number;
  /** Calls per write point name (IoOptions.point), for tracing which points a workload reaches. */
  points: Record<string, number>;
}

export interface MemoryFileOptions {
  readOnly?: boolean;
  /** Initial contents (copied). */
  data?: Uint8Array;
  /** Defaults to everything supported; switch some off to test callers' UNSUPPORTED handling. */
  capabilities?: Partial<HostCapabilities>;
}

export interface MemoryFile extends HostFile {
  injectFault(fault: FaultSpec): void;
  clearFaults(): void;
  readonly stats: MemoryFileStats;
  /** A copy of the whole file (test helper: allocates `size` bytes). */
  contents(): Uint8Array;
}

export function createMemoryFile(opts: MemoryFileOptions = {}): MemoryFile {
  return new MemoryHostFile(opts);
}

class MemoryHostFile implements MemoryFile {
  readonly readOnly: boolean;
  readonly capabilities: HostCapabilities;
  readonly stats: MemoryFileStats = {
    reads: 0,
    writes: 0,
    flushes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    faultsFired: 0,
    points: {},
  };
  private readonly chunks = new Map<number, Uint8Array>();
  private length = 0;
  private readonly faults = new FaultPlan();
  private closed = false;

  constructor(opts: MemoryFileOptions) {
    this.readOnly = opts.readOnly ?? false;
    this.capabilities = {
      allocate: true,
      punchHole: true,
      zeroRange: true,
      seekData: true,
      ofdLocks: true,
      ...opts.capabilities,
    };
    if (opts.data) {
      this.store(0, opts.data);
      this.length = opts.data.length;
    }
  }

  injectFault(fault: FaultSpec): void {
    this.faults.inject(fault);
  }

  clearFaults(): void {
    this.faults.clear();
  }

  contents(): Uint8Array {
    const out = new Uint8Array(this.length);
    this.load(0, out);
    return out;
  }

  async size(): Promise<number> {
    this.checkOpen();
    return this.length;
  }

  async allocatedBytes(): Promise<number> {
    this.checkOpen();
    return this.chunks.size * CHUNK;
  }

  async read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<number> {
    this.begin("read", offset, into.length, opts);
    const n = Math.max(0, Math.min(into.length, this.length - offset));
    this.load(offset, into.subarray(0, n));
    this.stats.bytesRead += n;
    return n;
  }

  async readFull(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void> {
    const n = await this.read(offset, into, opts);
    into.fill(0, n);
  }

  async write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    this.begin("write", offset, data.length, opts);
    this.store(offset, data);
    this.length = Math.max(this.length, offset + data.length);
    this.stats.bytesWritten += data.length;
    if (opts?.fua) await this.flush({ point: opts.point === undefined ? "flush" : `${opts.point}.fua` });
  }

  async writev(offset: number, buffers: readonly Uint8Array[], opts?: IoOptions): Promise<void> {
    const total = buffers.reduce((sum, b) => sum + b.length, 0);
    this.begin("write", offset, total, opts);
    let position = offset;
    for (const b of buffers) {
      this.store(position, b);
      position += b.length;
    }
    this.length = Math.max(this.length, offset + total);
    this.stats.bytesWritten += total;
    if (opts?.fua) await this.flush({ point: opts.point === undefined ? "flush" : `${opts.point}.fua` });
  }

  async truncate(size: number): Promise<void> {
    checkRange(size, 0);
    this.begin("write", Math.min(size, this.length), Math.abs(size - this.length));
    // Bytes past the new end must read as zeros if the file grows again; chunks preallocated past the
    // old end go too, as on a real file system.
    if (size % CHUNK !== 0) this.chunks.get(Math.floor(size / CHUNK))?.fill(0, size % CHUNK);
    for (const index of [...this.chunks.keys()]) if (index * CHUNK >= size) this.chunks.delete(index);
    this.length = size;
  }

  async flush(opts?: IoOptions): Promise<void> {
    this.checkOpen();
    if (this.faults.deadHandle) throw this.faults.deadHandle;
    this.stats.flushes++;
    const point = opts?.point ?? "flush";
    this.stats.points[point] = (this.stats.points[point] ?? 0) + 1;
    try {
      // Same contract as the real file: an fsync failure is permanent.
      this.faults.fireFlush(point);
    } finally {
      this.stats.faultsFired = this.faults.faultsFired;
    }
  }

  async allocate(offset: number, length: number, keepSize = false): Promise<void> {
    this.beginFallocate("allocate", offset, length);
    if (length === 0) return; // as on the real file: an empty range changes nothing, not even the size
    this.forEachChunk(offset, length, (index) => this.chunk(index));
    if (!keepSize) this.length = Math.max(this.length, offset + length);
  }

  async punchHole(offset: number, length: number): Promise<void> {
    this.beginFallocate("punchHole", offset, length);
    if (length === 0) return; // as on the real file: an empty range changes nothing, not even the size
    this.punch(offset, length);
  }

  async zeroRange(offset: number, length: number, keepSize = false): Promise<void> {
    this.beginFallocate("zeroRange", offset, length);
    if (length === 0) return; // as on the real file: an empty range changes nothing, not even the size
    this.forEachChunk(offset, length, (index, start, end) => this.chunk(index).fill(0, start, end));
    if (!keepSize) this.length = Math.max(this.length, offset + length);
  }

  async seekData(offset: number): Promise<number | null> {
    checkRange(offset, 0);
    this.checkOpen();
    if (offset >= this.length) return null;
    if (!this.capabilities.seekData) return offset;
    const first = Math.floor(offset / CHUNK);
    let next = Number.POSITIVE_INFINITY;
    for (const index of this.chunks.keys()) if (index >= first && index < next) next = index;
    const found = Math.max(offset, next * CHUNK);
    return found < this.length ? found : null;
  }

  async seekHole(offset: number): Promise<number> {
    checkRange(offset, 0);
    this.checkOpen();
    if (offset >= this.length) return offset;
    if (!this.capabilities.seekData) return this.length;
    let index = Math.floor(offset / CHUNK);
    while (this.chunks.has(index)) index++;
    return Math.min(this.length, Math.max(offset, index * CHUNK));
  }

  async lockImage(_mode: LockMode): Promise<void> {
    this.checkOpen();
  }

  async unlockImage(): Promise<void> {
    this.checkOpen();
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Common entry checks; counts the call and fires matching faults before anything changes. */
  private begin(op: "read" | "write", offset: number, length: number, opts?: IoOptions): void {
    checkRange(offset, length);
    this.checkOpen();
    throwIfAborted(opts?.signal);
    if (op === "write") {
      if (this.readOnly) throw readOnlyError();
      if (this.faults.deadHandle) throw this.faults.deadHandle;
      this.stats.writes++;
      if (opts?.point !== undefined) this.stats.points[opts.point] = (this.stats.points[opts.point] ?? 0) + 1;
    } else {
      this.stats.reads++;
    }
    try {
      this.faults.fire(op, offset, length, opts?.point);
    } finally {
      this.stats.faultsFired = this.faults.faultsFired;
    }
  }

  private beginFallocate(capability: FallocateCapability, offset: number, length: number): void {
    checkRange(offset, length);
    if (this.readOnly) throw readOnlyError();
    if (!this.capabilities[capability]) throw unsupportedError(capability);
    this.begin("write", offset, length);
  }

  private checkOpen(): void {
    if (this.closed) {
      throw EngineError.from(Object.assign(new Error("file is closed"), { code: "EBADF" }));
    }
  }

  private chunk(index: number): Uint8Array {
    let c = this.chunks.get(index);
    if (c === undefined) {
      c = new Uint8Array(CHUNK);
      this.chunks.set(index, c);
    }
    return c;
  }

  /** Calls `fn(chunkIndex, startInChunk, endInChunk)` for each chunk the range touches. */
  private forEachChunk(
    offset: number,
    length: number,
    fn: (index: number, start: number, end: number) => void,
  ): void {
    let position = offset;
    const end = offset + length;
    while (position < end) {
      const index = Math.floor(position / CHUNK);
      const start = position - index * CHUNK;
      const stop = Math.min(CHUNK, end - index * CHUNK);
      fn(index, start, stop);
      position = index * CHUNK + stop;
    }
  }

  private store(offset: number, data: Uint8Array): void {
    let copied = 0;
    this.forEachChunk(offset, data.length, (index, start, end) => {
      this.chunk(index).set(data.subarray(copied, copied + end - start), start);
      copied += end - start;
    });
  }

  private load(offset: number, into: Uint8Array): void {
    let copied = 0;
    this.forEachChunk(offset, into.length, (index, start, end) => {
      const c = this.chunks.get(index);
      if (c) into.set(c.subarray(start, end), copied);
      else into.fill(0, copied, copied + end - start);
      copied += end - start;
    });
  }

  /** Zeroes the range, dropping the chunks it covers whole. Visits only existing chunks: ranges may be huge. */
  private punch(offset: number, length: number): void {
    const end = offset + length;
    for (const [index, c] of [...this.chunks]) {
      const chunkStart = index * CHUNK;
      if (chunkStart + CHUNK <= offset || chunkStart >= end) continue;
      const start = Math.max(offset, chunkStart) - chunkStart;
      const stop = Math.min(end, chunkStart + CHUNK) - chunkStart;
      if (start === 0 && stop === CHUNK) this.chunks.delete(index);
      else c.fill(0, start, stop);
    }
  }
}
