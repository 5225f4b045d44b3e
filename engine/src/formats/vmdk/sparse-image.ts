import { promisify } from "node:util";
import { inflate } from "node:zlib";
import type { BackingLink, BlockImage, TruncateOptions } from "../../block-image.js";
import { EngineError, throwIfAborted } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import type {
  CheckResult,
  FormatDetails,
  IoOptions,
  LayerStatus,
  Limits,
  RepairMode,
  ZeroOptions,
} from "../../types.js";
import { checkSparseImage } from "./check.js";
import { randomCid, replaceCid } from "./descriptor.js";
import { corrupt, unsupported, vmdkError } from "./errors.js";
import type { GrainTables } from "./grain-tables.js";
import { GTE_ZEROED, MAX_EXTENT_SECTORS, type SparseLayout } from "./header.js";
import { readU32 } from "./le.js";
import { GRAIN_MARKER_SIZE } from "./markers.js";
import type { VmdkMetadata } from "./metadata.js";

const inflateAsync = promisify(inflate);

/** Largest request the core hands us in one call. */
const MAX_TRANSFER = 32 * 1024 * 1024;
/** blockStatus looks at most this many grains per call; its length is only a hint, callers ask again. */
const MAX_STATUS_GRAINS = 1 << 20;

export type GrainState =
  | { kind: "unallocated" }
  | { kind: "zeroed" }
  | { kind: "data"; hostOffset: number }
  | { kind: "compressed"; hostOffset: number };

/** A monolithicSparse or streamOptimized image opened on one host file. */
export class VmdkSparseImage implements BlockImage {
  readonly format = "vmdk" as const;
  readonly backing = undefined;
  readonly virtualSize: number;
  readonly readOnly: boolean;
  readonly limits: Limits;

  private readonly layout: SparseLayout;
  /** Where the next grain goes: the file length at open rounded up to a grain, then bumped per grain (no fstat). */
  private nextGrainOffset: number;
  /** Bytes of the file known to exist (for bounds checks), without asking the host each time. */
  private knownFileEnd: number;
  private cid: number;
  private cidUpdated = false;
  private descriptorText: string;
  /** Serializes every change so two writers can't allocate the same grain. */
  private mutationQueue: Promise<unknown> = Promise.resolve();
  private lastInflated: { grain: number; data: Uint8Array } | undefined;
  private closed = false;

  constructor(
    private readonly file: HostFile,
    private readonly meta: VmdkMetadata,
    private readonly tables: GrainTables,
    fileSize: number,
    readOnly: boolean,
  ) {
    this.layout = meta.layout;
    this.virtualSize = meta.layout.virtualSize;
    this.readOnly = readOnly || meta.layout.forceReadOnly || meta.layout.compressed || file.readOnly;
    const grain = meta.layout.grainSize;
    this.limits = {
      requestAlignment: 1,
      maxTransfer: MAX_TRANSFER,
      zeroAlignment: grain,
      discardAlignment: grain,
    };
    this.nextGrainOffset = Math.ceil(fileSize / grain) * grain;
    this.knownFileEnd = fileSize;
    this.cid = meta.descriptor.cid;
    this.descriptorText = meta.descriptorText;
  }

  /** Classifies one grain from its table entry, rejecting entries that point outside the data area. */
  async grainState(grainIndex: number): Promise<GrainState> {
    return this.classify(grainIndex, await this.tables.entry(grainIndex));
  }

  private classify(grainIndex: number, entry: number): GrainState {
    if (entry === 0) return { kind: "unallocated" };
    if (entry === GTE_ZEROED && this.layout.zeroedGrain) return { kind: "zeroed" };
    const hostOffset = entry * 512;
    const minimum = Math.max(this.layout.grainOffset, this.layout.descOffset + this.layout.descSize);
    if (hostOffset < minimum || hostOffset >= this.knownFileEnd) {
      throw corrupt(
        "VMDK_GRAIN_OUT_OF_RANGE",
        `grain ${grainIndex} points to sector ${entry}, outside the data area`,
      );
    }
    return { kind: this.layout.compressed ? "compressed" : "data", hostOffset };
  }

  async read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void> {
    this.assertOpen();
    const grainSize = this.layout.grainSize;
    // Contiguous host runs are read with one request.
    let run: { host: number; at: number; length: number } | undefined;
    const flushRun = async () => {
      if (run === undefined) return;
      await this.file.readFull(run.host, into.subarray(run.at, run.at + run.length), opts);
      run = undefined;
    };
    for (let done = 0; done < into.length; ) {
      throwIfAborted(opts?.signal);
      const guest = offset + done;
      const grainIndex = Math.floor(guest / grainSize);
      const inGrain = guest - grainIndex * grainSize;
      const n = Math.min(grainSize - inGrain, into.length - done);
      const state = await this.grainState(grainIndex);
      if (state.kind === "data") {
        const host = state.hostOffset + inGrain;
        if (run !== undefined && run.host + run.length === host) run.length += n;
        else {
          await flushRun();
          run = { host, at: done, length: n };
        }
      } else {
        await flushRun();
        if (state.kind === "compressed") {
          const grain = await this.inflateGrain(grainIndex, state.hostOffset);
          if (inGrain + n > grain.length)
            throw corrupt("VMDK_BAD_COMPRESSED_GRAIN", `grain ${grainIndex} is too short`);
          into.set(grain.subarray(inGrain, inGrain + n), done);
        } else {
          into.fill(0, done, done + n);
        }
      }
      done += n;
    }
    await flushRun();
  }

  private async inflateGrain(grainIndex: number, hostOffset: number): Promise<Uint8Array> {
    if (this.lastInflated?.grain === grainIndex) return this.lastInflated.data;
    const grainSize = this.layout.grainSize;
    const markerBytes = new Uint8Array(GRAIN_MARKER_SIZE);
    await this.file.readFull(hostOffset, markerBytes);
    const size = readU32(markerBytes, 8);
    // QEMU reads at most two grains' worth of compressed data; more can only be hostile.
    if (size === 0 || size > 2 * grainSize || hostOffset + GRAIN_MARKER_SIZE + size > this.knownFileEnd) {
      throw corrupt("VMDK_BAD_GRAIN_MARKER", `grain ${grainIndex} has an invalid compressed size ${size}`);
    }
    const compressed = new Uint8Array(size);
    await this.file.readFull(hostOffset + GRAIN_MARKER_SIZE, compressed);
    let data: Uint8Array;
    try {
      data = await inflateAsync(compressed, { maxOutputLength: grainSize });
    } catch (err) {
      throw new EngineError("CORRUPT", `vmdk: grain ${grainIndex} does not decompress`, {
        reason: "VMDK_BAD_COMPRESSED_GRAIN",
        cause: err,
      });
    }
    this.lastInflated = { grain: grainIndex, data };
    return data;
  }

  async write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    this.assertWritable();
    await this.serialized(() => this.writeLocked(offset, data, opts));
  }

  private async writeLocked(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    throwIfAborted(opts?.signal);
    await this.updateCidOnce();
    const grainSize = this.layout.grainSize;
    const inPlace: { host: number; start: number; end: number }[] = [];
    const fresh: { grainIndex: number; data: Uint8Array }[] = [];
    for (let done = 0; done < data.length; ) {
      const guest = offset + done;
      const grainIndex = Math.floor(guest / grainSize);
      const inGrain = guest - grainIndex * grainSize;
      const n = Math.min(grainSize - inGrain, data.length - done);
      const piece = data.subarray(done, done + n);
      const state = await this.grainState(grainIndex);
      if (state.kind === "data") {
        const host = state.hostOffset + inGrain;
        const last = inPlace.at(-1);
        if (last !== undefined && last.end === done && last.host + (last.end - last.start) === host)
          last.end = done + n;
        else inPlace.push({ host, start: done, end: done + n });
      } else {
        this.requireTable(grainIndex);
        // New grain: the untouched head and tail read as zeros (unallocated or zeroed, and no backing).
        let whole = piece;
        if (n !== grainSize) {
          whole = new Uint8Array(grainSize);
          whole.set(piece, inGrain);
        }
        fresh.push({ grainIndex, data: whole });
      }
      done += n;
    }
    await Promise.all(
      inPlace.map((w) =>
        this.file.write(w.host, data.subarray(w.start, w.end), { point: "grain_write.in_place" }),
      ),
    );
    if (fresh.length > 0) await this.allocateGrains(fresh);
  }

  /** Writes new grains back to back at the end of the file, then points both table copies at them. */
  private async allocateGrains(grains: { grainIndex: number; data: Uint8Array }[]): Promise<void> {
    const grainSize = this.layout.grainSize;
    const first = this.nextGrainOffset;
    const end = first + grains.length * grainSize;
    if (end / 512 > MAX_EXTENT_SECTORS) {
      throw vmdkError("NO_SPACE", "VMDK_EXTENT_FULL", "the extent cannot grow past 2^32 sectors");
    }
    this.nextGrainOffset = end;
    await this.file.writev(
      first,
      grains.map((g) => g.data),
      { point: "grain_write" },
    );
    this.knownFileEnd = Math.max(this.knownFileEnd, end);
    // The grains must be durable before a table points at them: otherwise a power loss can keep the
    // table entry but not the grain, leaving an entry past EOF that the next allocation would hand out
    // again (two entries, one grain). Found by the power-loss simulation (engine/src/testing).
    await this.file.flush({ point: "flush.grain_barrier" });
    // Batch neighbouring entries of one table into one write per copy.
    let i = 0;
    while (i < grains.length) {
      const gdIndex = Math.floor(grains[i]!.grainIndex / this.layout.gtesPerGt);
      const firstEntry = grains[i]!.grainIndex % this.layout.gtesPerGt;
      const values: number[] = [];
      let j = i;
      while (
        j < grains.length &&
        grains[j]!.grainIndex === grains[i]!.grainIndex + (j - i) &&
        Math.floor(grains[j]!.grainIndex / this.layout.gtesPerGt) === gdIndex
      ) {
        values.push((first + j * grainSize) / 512);
        j++;
      }
      await this.tables.setEntries(gdIndex, firstEntry, values);
      i = j;
    }
  }

  private requireTable(grainIndex: number): void {
    if (!this.tables.hasTable(Math.floor(grainIndex / this.layout.gtesPerGt))) {
      throw unsupported("VMDK_GT_MISSING", "no grain table is allocated for this region of the image");
    }
  }

  /** Like QEMU: the first change after open gets a new content ID, so stale children can be detected. */
  private async updateCidOnce(): Promise<void> {
    if (this.cidUpdated) return;
    const cid = randomCid();
    const text = replaceCid(this.descriptorText, cid);
    const encoded = new TextEncoder().encode(text);
    if (encoded.length < this.layout.descSize) {
      const region = new Uint8Array(this.layout.descSize);
      region.set(encoded);
      await this.file.write(this.layout.descOffset, region, { point: "descriptor_update" });
      this.descriptorText = text;
      this.cid = cid;
    }
    this.cidUpdated = true;
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.assertWritable();
    await this.serialized(() => this.writeZeroesLocked(offset, length, opts));
  }

  private async writeZeroesLocked(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    throwIfAborted(opts?.signal);
    const grainSize = this.layout.grainSize;
    const end = offset + length;
    // Grains that become zeroed-grain entries, and allocated pieces that need zero bytes written.
    const whole: number[] = [];
    const inPlace: { offset: number; length: number }[] = [];
    for (let at = offset; at < end; ) {
      const grainIndex = Math.floor(at / grainSize);
      const grainStart = grainIndex * grainSize;
      const grainEnd = Math.min(grainStart + grainSize, this.virtualSize);
      const n = Math.min(grainEnd, end) - at;
      const state = await this.grainState(grainIndex);
      if (this.layout.zeroedGrain && at === grainStart && at + n === grainEnd) {
        if (state.kind !== "zeroed") whole.push(grainIndex);
      } else if (state.kind === "data") {
        inPlace.push({ offset: at, length: n });
      }
      // Otherwise the piece is unallocated or zeroed and already reads as zeros (there is no backing).
      at += n;
    }
    if (inPlace.length > 0 && opts?.noFallback) {
      throw unsupported("VMDK_ZERO_UNSUPPORTED", "this range can only be zeroed by writing zeros");
    }
    for (const grainIndex of whole) this.requireTable(grainIndex);
    if (whole.length === 0 && inPlace.length === 0) return;
    await this.updateCidOnce();
    const zeros = new Uint8Array(Math.min(grainSize, length));
    for (const p of inPlace) await this.writeLocked(p.offset, zeros.subarray(0, p.length), opts);
    for (let i = 0; i < whole.length; ) {
      const gdIndex = Math.floor(whole[i]! / this.layout.gtesPerGt);
      const values: number[] = [];
      let j = i;
      while (
        j < whole.length &&
        whole[j] === whole[i]! + (j - i) &&
        Math.floor(whole[j]! / this.layout.gtesPerGt) === gdIndex
      ) {
        values.push(GTE_ZEROED);
        j++;
      }
      await this.tables.setEntries(gdIndex, whole[i]! % this.layout.gtesPerGt, values);
      i = j;
    }
  }

  /** Advisory and a no-op: VMDK has no way to free a grain (QEMU's vmdk driver has no discard either). */
  async discard(_offset: number, _length: number, _opts?: IoOptions): Promise<void> {
    this.assertWritable();
  }

  async blockStatus(offset: number, length: number, opts?: IoOptions): Promise<LayerStatus> {
    this.assertOpen();
    throwIfAborted(opts?.signal);
    const grainSize = this.layout.grainSize;
    const limit = Math.min(offset + length, this.virtualSize);
    const firstGrain = Math.floor(offset / grainSize);
    const first = await this.grainState(firstGrain);
    const lastGrain = Math.min(Math.ceil(limit / grainSize), firstGrain + MAX_STATUS_GRAINS);
    // Walk a table at a time: a missing table is a whole run of unallocated grains, no per-grain work.
    const gtes = this.layout.gtesPerGt;
    let g = firstGrain + 1;
    scan: while (g < lastGrain) {
      const gdIndex = Math.floor(g / gtes);
      const tableEnd = Math.min((gdIndex + 1) * gtes, lastGrain);
      if (gdIndex !== Math.floor((g - 1) / gtes) || g === firstGrain + 1) {
        await this.tables.prefetch(gdIndex, Math.ceil((lastGrain - g) / gtes));
      }
      const table = await this.tables.readTable(gdIndex);
      if (table === undefined) {
        if (first.kind !== "unallocated") break;
        g = tableEnd;
        continue;
      }
      // Compare raw entries (no per-grain objects): this loop runs over millions of grains on big disks.
      const base = gdIndex * gtes;
      for (; g < tableEnd; g++) {
        const entry = table[g - base] ?? 0;
        if (first.kind === "unallocated") {
          if (entry !== 0) break scan;
        } else if (first.kind === "zeroed") {
          if (entry !== GTE_ZEROED) break scan;
        } else {
          if (entry === 0 || (entry === GTE_ZEROED && this.layout.zeroedGrain)) break scan;
          if (first.kind === "data" && entry * 512 !== first.hostOffset + (g - firstGrain) * grainSize)
            break scan;
          this.classify(g, entry); // range check
        }
      }
    }
    const runEnd = Math.min(g * grainSize, this.virtualSize);
    const runLength = runEnd - offset;
    switch (first.kind) {
      case "unallocated":
        return { length: runLength, allocated: false, data: false, zero: false };
      case "zeroed":
        return { length: runLength, allocated: true, data: false, zero: true };
      case "data":
        return {
          length: runLength,
          allocated: true,
          data: true,
          zero: false,
          hostOffset: first.hostOffset + (offset - firstGrain * grainSize),
        };
      case "compressed":
        return { length: runLength, allocated: true, data: true, zero: false, compressed: true };
    }
  }

  async truncate(newSize: number, _opts: TruncateOptions): Promise<void> {
    if (newSize === this.virtualSize) return;
    throw unsupported("VMDK_RESIZE_UNSUPPORTED", "vmdk images cannot be resized");
  }

  async flush(_opts?: IoOptions): Promise<void> {
    this.assertOpen();
    if (!this.readOnly) await this.serialized(() => this.flushLocked());
  }

  async check(opts: { repair: RepairMode; signal?: AbortSignal }): Promise<CheckResult> {
    this.assertOpen();
    if (opts.repair !== "none")
      throw unsupported("VMDK_REPAIR_UNSUPPORTED", "vmdk images cannot be repaired (as in QEMU)");
    return this.serialized(() =>
      checkSparseImage({
        file: this.file,
        layout: this.layout,
        tables: this.tables,
        fileSize: this.knownFileEnd,
        footerOffset: this.meta.footerOffset,
        signal: opts.signal,
      }),
    );
  }

  async setBackingLink(link: BackingLink | undefined, backing: BlockImage | undefined): Promise<void> {
    if (link === undefined && backing === undefined) return;
    throw unsupported("VMDK_BACKING_UNSUPPORTED", "vmdk images cannot have a backing file here");
  }

  details(): FormatDetails {
    return {
      vmdk: {
        subformat: this.meta.subformat,
        grainSize: this.layout.grainSize,
        cid: this.cid,
        parentCid: this.meta.descriptor.parentCid,
      },
    };
  }

  physicalBytes(): Promise<number> {
    return this.file.allocatedBytes();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly) await this.serialized(() => this.flushLocked());
    } finally {
      this.closed = true;
      await this.file.close();
    }
  }

  /** Tables a failed update left unsynced are rewritten first: a flush acknowledges what memory holds. */
  private async flushLocked(): Promise<void> {
    await this.tables.syncUnsynced();
    await this.file.flush({ point: "flush" });
  }

  private serialized<T>(task: () => Promise<T>): Promise<T> {
    const run = this.mutationQueue.then(task, task);
    this.mutationQueue = run.catch(() => undefined);
    return run;
  }

  private assertOpen(): void {
    if (this.closed)
      throw new EngineError("FAILED_PRECONDITION", "vmdk: image is closed", { reason: "IMAGE_CLOSED" });
  }

  private assertWritable(): void {
    this.assertOpen();
    if (this.readOnly)
      throw new EngineError("READ_ONLY", "vmdk: image is read-only", { reason: "VMDK_READ_ONLY" });
  }
}
