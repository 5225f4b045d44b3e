import type { BackingLink, BlockImage, TruncateOptions } from "../../block-image.js";
import { fillWithZeros } from "../../core/zero-fill.js";
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
import { checkImage } from "./check.js";
import {
  assertInImage,
  freeClustersFrom,
  getHostOffset,
  getHostOffsetCached,
  type HostMapping,
  preallocateClusters,
  readAheadL2,
  writeClusters,
  zeroClusters,
} from "./cluster.js";
import { inflateCluster } from "./compress.js";
import { planConcurrentWrite, runConcurrentWrite } from "./concurrent-write.js";
import { unsupported } from "./errors.js";
import {
  backingFormatOf,
  COMPAT_LAZY_REFCOUNTS,
  FIELD,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTENDED_L2,
  MAX_BACKING_NAME,
  MAX_L1_BYTES,
  withBackingFormat,
} from "./header.js";
import type { CompressedExtent } from "./l2-entry.js";
import { alignUp, l1EntriesFor } from "./layout.js";
import type { Qcow2Metadata } from "./metadata.js";
import { Mutex } from "./mutex.js";

const MAX_TRANSFER = 16 * 1024 * 1024;
/** Preallocation steps (progress reports and cancellation points): at least this many... */
const PREALLOC_MIN_STEPS = 16;
/** ...of at most this many guest bytes each. */
const PREALLOC_MAX_STEP = 256 * 1024 * 1024;
/** Guest bytes preallocated between ordered metadata flushes (bounds the dirty L2 tables held). */
const PREALLOC_FLUSH_BYTES = 16 * 1024 * 1024 * 1024;

function missingBacking(): EngineError {
  return new EngineError("FAILED_PRECONDITION", "qcow2: the backing image was not supplied", {
    reason: "QCOW2_BACKING_REQUIRED",
  });
}

/** Metadata corruption that must stop writes. A bad compressed payload is a read error of one cluster (as in QEMU). */
export function isCorruption(err: unknown): boolean {
  return (
    err instanceof EngineError &&
    err.code === "CORRUPT" &&
    err.reason !== "QCOW2_CORRUPT" &&
    err.reason !== "QCOW2_BAD_COMPRESSED_CLUSTER"
  );
}

/**
 * An open qcow2 layer. Metadata work runs under one mutex (QEMU's s->lock); like QEMU, data I/O of
 * reads and writes runs outside it (concurrent-write.ts, InflightIo), and operations that rewrite
 * mappings wholesale wait for the writes in flight first. Metadata lives in Qcow2Metadata, mapping and
 * allocation in cluster.ts, and this class ties them to the BlockImage contract. Detected corruption
 * sets the corrupt bit and stops further writes.
 */
export class Qcow2Image implements BlockImage {
  readonly format = "qcow2" as const;
  readonly limits: Limits;
  private readonly lock = new Mutex();
  private lastInflated: { offset: number; data: Buffer } | undefined;
  private metadataPreallocation: Promise<boolean> | undefined;
  private closed = false;

  constructor(
    readonly md: Qcow2Metadata,
    readonly readOnly: boolean,
    public backing: BlockImage | undefined,
  ) {
    this.limits = {
      requestAlignment: 1,
      maxTransfer: MAX_TRANSFER,
      zeroAlignment: md.clusterSize,
      discardAlignment: md.clusterSize,
    };
  }

  get virtualSize(): number {
    return this.md.header.size;
  }

  private get file(): HostFile {
    return this.md.file;
  }

  /** Runs `fn` under the image lock; corruption found on the way is recorded on disk. */
  private async locked<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed)
      throw new EngineError("FAILED_PRECONDITION", "qcow2: image is closed", { reason: "IMAGE_CLOSED" });
    return this.lock.run(async () => {
      try {
        return await fn();
      } catch (err) {
        if (isCorruption(err) && !this.readOnly) await this.md.markCorrupt();
        throw err;
      }
    });
  }

  /**
   * Runs a mutating operation under the image lock. A host I/O failure in the middle of one can leave
   * the in-memory metadata (caches, a half-grown table) ahead of the file, and writing on from that state
   * could make the on-disk image inconsistent; so, as for a failed fsync (reliability.md b.14), the handle
   * stops writing. What is on disk has at most leaks and is used as it is by the next open.
   */
  private mutating<T>(fn: () => Promise<T>, waitForWrites = true): Promise<T> {
    return this.locked(async () => {
      if (this.md.writeFailure && !this.readOnly) throw writeFailedError(this.md.writeFailure);
      try {
        if (waitForWrites) await this.md.inflight.drainWrites();
        return await fn();
      } catch (err) {
        if (isHostFailure(err) && !this.readOnly) this.md.writeFailure ??= err;
        throw err;
      }
    });
  }

  private assertWritable(): void {
    if (this.readOnly)
      throw new EngineError("READ_ONLY", "qcow2: image is open read-only", { reason: "READ_ONLY" });
    this.md.assertWritable();
    // Copy-on-write and zeroing decisions depend on the backing content: never guess it.
    if (this.md.header.backingFile !== undefined && this.backing === undefined) throw missingBacking();
  }

  read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void> {
    if (!this.closed && opts?.signal?.aborted !== true) {
      const io = this.readConcurrent(offset, into);
      if (io) return io;
    }
    return this.locked(async () => {
      throwIfAborted(opts?.signal);
      assertInImage(this.md, offset, into.length);
      await this.readUnlocked(offset, into);
    });
  }

  /**
   * The common read without the lock: every mapping is in cached tables and reads as data or zeros.
   * Returns undefined (nothing read) otherwise, and the locked path answers — errors included.
   */
  private readConcurrent(offset: number, into: Uint8Array): Promise<void> | undefined {
    const md = this.md;
    if (offset < 0 || offset + into.length > md.header.size) return undefined;
    const zeroUnallocated = this.backing === undefined && md.header.backingFile === undefined;
    const reads: Array<{ host: number; part: Uint8Array }> = [];
    try {
      for (let done = 0; done < into.length; ) {
        const m = getHostOffsetCached(md, offset + done, into.length - done);
        if (!m) return undefined;
        const part = into.subarray(done, done + m.bytes);
        if (m.type === "normal") reads.push({ host: m.hostOffset, part });
        else if (
          m.type === "zero-plain" ||
          m.type === "zero-alloc" ||
          (m.type === "unallocated" && zeroUnallocated)
        )
          part.fill(0);
        else return undefined;
        done += m.bytes;
      }
    } catch {
      return undefined;
    }
    if (reads.length === 0) return Promise.resolve();
    const first = reads[0] as { host: number; part: Uint8Array };
    const io =
      reads.length === 1
        ? this.file.readFull(first.host, first.part)
        : (async () => {
            for (const r of reads) await this.file.readFull(r.host, r.part);
          })();
    return md.inflight.track(io, false);
  }

  /** Reads this layer's view of the range (used for reads and for copy-on-write sources). */
  async readUnlocked(offset: number, into: Uint8Array): Promise<void> {
    let done = 0;
    while (done < into.length) {
      const pos = offset + done;
      const m = await getHostOffset(this.md, pos, into.length - done);
      const part = into.subarray(done, done + m.bytes);
      switch (m.type) {
        case "normal":
          await this.file.readFull(m.hostOffset, part);
          break;
        case "zero-plain":
        case "zero-alloc":
          part.fill(0);
          break;
        case "unallocated":
        case "unallocated-alloc":
          await this.readBacking(pos, part);
          break;
        case "compressed": {
          if (!m.compressed) throw new EngineError("INTERNAL", "qcow2: compressed mapping without extent");
          const within = pos % this.md.clusterSize;
          part.set((await this.inflate(m.compressed)).subarray(within, within + m.bytes));
          break;
        }
      }
      done += m.bytes;
    }
  }

  private async inflate(extent: CompressedExtent): Promise<Buffer> {
    const at = extent.offset;
    if (this.lastInflated?.offset === at) return this.lastInflated.data;
    const raw = Buffer.alloc(extent.length);
    await this.file.readFull(at, raw);
    const data = inflateCluster(raw, this.md.clusterSize);
    this.lastInflated = { offset: at, data };
    return data;
  }

  /** Unallocated runs come from the backing layer; past its end (or without one) they are zeros. */
  private async readBacking(offset: number, part: Uint8Array): Promise<void> {
    const backing = this.backing;
    if (!backing) {
      if (this.md.header.backingFile !== undefined) throw missingBacking();
      part.fill(0);
      return;
    }
    const available = Math.max(0, Math.min(part.length, backing.virtualSize - offset));
    for (let done = 0; done < available; ) {
      const n = Math.min(available - done, backing.limits.maxTransfer);
      await backing.read(offset + done, part.subarray(done, done + n));
      done += n;
    }
    part.fill(0, available);
  }

  async write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    const md = this.md;
    for (;;) {
      const plan = await this.mutating(async () => {
        throwIfAborted(opts?.signal);
        this.assertWritable();
        assertInImage(md, offset, data.length);
        await md.markDirtyIfLazy();
        await md.trimCaches();
        this.lastInflated = undefined;
        const hasBacking = this.backing !== undefined || md.header.backingFile !== undefined;
        return planConcurrentWrite(md, offset, data, !hasBacking);
      }, false);
      if (plan.kind === "wait") {
        await plan.until;
        continue;
      }
      if (plan.kind === "serialised") return this.writeSerialised(offset, data, opts);
      try {
        await md.inflight.track(runConcurrentWrite(md, plan), true);
      } catch (err) {
        if (isHostFailure(err)) md.writeFailure ??= err;
        throw err;
      }
      this.lastInflated = undefined;
      if (opts?.fua) await this.flush();
      return;
    }
  }

  /** Writes needing copy-on-write of real data, with every other write finished first. */
  private writeSerialised(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    return this.mutating(async () => {
      throwIfAborted(opts?.signal);
      this.assertWritable();
      assertInImage(this.md, offset, data.length);
      await this.md.markDirtyIfLazy();
      await writeClusters(this.md, offset, data, (o, b) => this.readUnlocked(o, b));
      this.lastInflated = undefined;
      if (opts?.fua) await this.md.flush();
      await this.md.trimCaches();
    });
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.mutating(async () => {
      throwIfAborted(opts?.signal);
      this.assertWritable();
      assertInImage(this.md, offset, length);
      const cs = this.md.clusterSize;
      const hasBacking = this.backing !== undefined || this.md.header.backingFile !== undefined;
      const v2 = this.md.header.version === 2;
      const end = offset + length;
      const first = alignUp(offset, cs);
      // A range ending at the image end covers its final partial cluster entirely.
      const wholeEnd = end === this.virtualSize ? alignUp(end, cs) : Math.floor(end / cs) * cs;
      const partials: Array<[number, number]> = [];
      if (wholeEnd <= first) {
        partials.push([offset, end]);
      } else {
        if (offset < first) partials.push([offset, first]);
        if (wholeEnd < end) partials.push([wholeEnd, end]);
      }
      const needsData = v2 && hasBacking;
      if (opts?.noFallback && (needsData || (await this.anyNonZero(partials)))) {
        throw unsupported("QCOW2_ZERO_NEEDS_FALLBACK", "range cannot be zeroed without writing data");
      }
      await this.md.markDirtyIfLazy();
      if (needsData) {
        await this.writeZeroBuffers(offset, length);
      } else {
        for (const [a, b] of partials)
          if (await this.anyNonZero([[a, b]])) await this.writeZeroBuffers(a, b - a);
        if (wholeEnd > first) {
          await zeroClusters(this.md, {
            offset: first,
            clusters: (wholeEnd - first) / cs,
            unmap: opts?.mayUnmap === true,
            mode: v2 ? "unallocate" : "zero-flag",
          });
        }
      }
      this.lastInflated = undefined;
      if (opts?.fua) await this.md.flush();
      await this.md.trimCaches();
    });
  }

  /** Whether any of the ranges may read as non-zero in this layer's view. */
  private async anyNonZero(ranges: Array<[number, number]>): Promise<boolean> {
    for (const [a, b] of ranges) {
      for (let pos = a; pos < b; ) {
        const m = await getHostOffset(this.md, pos, b - pos);
        const readsZero =
          m.type === "zero-plain" ||
          m.type === "zero-alloc" ||
          (m.type === "unallocated" && this.backing === undefined);
        if (!readsZero) return true;
        pos += m.bytes;
      }
    }
    return false;
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    const chunk = Math.min(length, 4 * 1024 * 1024);
    const zeros = Buffer.alloc(chunk);
    for (let done = 0; done < length; ) {
      const n = Math.min(chunk, length - done);
      await writeClusters(this.md, offset + done, zeros.subarray(0, n), (o, b) => this.readUnlocked(o, b));
      done += n;
    }
  }

  discard(offset: number, length: number, opts?: IoOptions): Promise<void> {
    return this.mutating(async () => {
      throwIfAborted(opts?.signal);
      this.assertWritable();
      assertInImage(this.md, offset, length);
      const cs = this.md.clusterSize;
      const first = alignUp(offset, cs);
      const end =
        offset + length === this.virtualSize
          ? alignUp(offset + length, cs)
          : Math.floor((offset + length) / cs) * cs;
      if (end <= first) return;
      const hasBacking = this.backing !== undefined || this.md.header.backingFile !== undefined;
      if (this.md.header.version === 2 && hasBacking) return; // v2 cannot hide the backing without data
      await this.md.markDirtyIfLazy();
      await zeroClusters(this.md, {
        offset: first,
        clusters: (end - first) / cs,
        unmap: true,
        mode: hasBacking ? "zero-flag" : "unallocate",
      });
      this.lastInflated = undefined;
      await this.md.trimCaches();
    });
  }

  blockStatus(offset: number, length: number, opts?: IoOptions): Promise<LayerStatus> {
    return this.locked(async () => {
      throwIfAborted(opts?.signal);
      assertInImage(this.md, offset, length);
      await readAheadL2(this.md, offset, length);
      // A map walks every table of the image: keep the cache within its bound (clean tables only).
      if (this.md.l2.overCapacity()) this.md.l2.trim();
      const m = await getHostOffset(this.md, offset, length);
      switch (m.type) {
        case "unallocated":
          return { length: m.bytes, allocated: false, data: false, zero: false };
        case "unallocated-alloc":
          // QEMU reports the host offset of a deferring subcluster too (OFFSET_VALID without ALLOCATED).
          return { length: m.bytes, allocated: false, data: false, zero: false, hostOffset: m.hostOffset };
        case "zero-plain":
          return { length: m.bytes, allocated: true, data: false, zero: true };
        case "zero-alloc":
          return { length: m.bytes, allocated: true, data: false, zero: true, hostOffset: m.hostOffset };
        case "compressed":
          return { length: m.bytes, allocated: true, data: true, zero: false, compressed: true };
        case "normal":
          return this.normalRunStatus(m);
      }
    });
  }

  /**
   * Like QEMU, a data run whose host range is a hole in the file also reads as zero — but only when
   * the image looks metadata-preallocated (QEMU asks the file only then).
   */
  private async normalRunStatus(m: HostMapping): Promise<LayerStatus> {
    if (!this.file.capabilities.seekData || !(await this.looksMetadataPreallocated()))
      return { length: m.bytes, allocated: true, data: true, zero: false, hostOffset: m.hostOffset };
    const dataAt = await this.file.seekData(m.hostOffset);
    if (dataAt === null || dataAt > m.hostOffset) {
      const length = dataAt === null ? m.bytes : Math.min(m.bytes, dataAt - m.hostOffset);
      return { length, allocated: true, data: true, zero: true, hostOffset: m.hostOffset };
    }
    const holeAt = await this.file.seekHole(m.hostOffset);
    return {
      length: Math.min(m.bytes, holeAt - m.hostOffset),
      allocated: true,
      data: true,
      zero: false,
      hostOffset: m.hostOffset,
    };
  }

  truncate(newSize: number, opts: TruncateOptions): Promise<void> {
    return this.mutating(async () => {
      throwIfAborted(opts.signal);
      this.assertWritable();
      if (!Number.isSafeInteger(newSize) || newSize < 0) {
        throw new EngineError("INVALID_ARGUMENT", "qcow2: invalid size", { reason: "QCOW2_BAD_SIZE" });
      }
      if (this.md.header.nbSnapshots > 0)
        throw unsupported("QCOW2_RESIZE_WITH_SNAPSHOTS", "cannot resize an image with snapshots");
      const oldSize = this.virtualSize;
      if (newSize === oldSize) return;
      await this.md.markDirtyIfLazy();
      if (newSize < oldSize) {
        if (opts.prealloc !== "off")
          throw unsupported("QCOW2_SHRINK_PREALLOC", "shrinking requires preallocation off");
        await freeClustersFrom(
          this.md,
          alignUp(newSize, this.md.clusterSize),
          alignUp(oldSize, this.md.clusterSize),
        );
        await this.md.flush();
        await this.md.writeSize(newSize);
        this.lastInflated = undefined;
        return;
      }
      await this.growL1(l1EntriesFor(this.md.layout, newSize));
      // Bytes between the old end and its cluster boundary may hold stale data: they must read as zeros.
      const tailEnd = Math.min(newSize, alignUp(oldSize, this.md.clusterSize));
      if (tailEnd > oldSize && (await this.anyNonZero([[oldSize, tailEnd]])))
        await this.writeZeroBuffers(oldSize, tailEnd - oldSize);
      await this.hideLongerBacking(tailEnd, newSize);
      // The new area is zeroed before the header makes it visible.
      await this.md.flush();
      await this.md.writeSize(newSize);
      await preallocateRange(this, oldSize, newSize, opts);
      await this.md.flush();
    });
  }

  /**
   * A grown area must read as zeros even where a longer backing image has data (QEMU zero-writes the
   * new area in that case): zero clusters on v3, zero data on v2.
   */
  private async hideLongerBacking(from: number, to: number): Promise<void> {
    const end = Math.min(to, this.backing?.virtualSize ?? 0);
    if (end <= from) return;
    const cs = this.md.clusterSize;
    if (this.md.header.version === 2) {
      await this.writeZeroBuffers(from, end - from);
      return;
    }
    const wholeEnd = end === to ? alignUp(end, cs) : Math.floor(end / cs) * cs;
    if (wholeEnd > from) {
      await zeroClusters(this.md, {
        offset: from,
        clusters: (wholeEnd - from) / cs,
        unmap: true,
        mode: "zero-flag",
      });
    }
    if (wholeEnd < end) await this.writeZeroBuffers(wholeEnd, end - wholeEnd);
  }

  /**
   * QEMU's qcow2_detect_metadata_preallocation, decided once per open as QEMU does: noticeably more
   * clusters in use than the file has allocated. Data clusters with holes (new clusters written only
   * where the guest wrote) then make QEMU look at the file's holes too; otherwise it reports them as data.
   */
  private looksMetadataPreallocated(): Promise<boolean> {
    this.metadataPreallocation ??= (async () => {
      const cs = this.md.clusterSize;
      const fileLength = await this.file.size();
      const realClusters = Math.floor((await this.file.allocatedBytes()) / cs);
      const threshold = Math.max(Math.floor((realClusters * 10) / 9), realClusters + 2);
      const endCluster = Math.ceil(fileLength / cs);
      return (await this.md.refcounts.countInUse(endCluster, threshold)) >= threshold;
    })().catch(() => false);
    return this.metadataPreallocation;
  }

  /** Moves the L1 table to a larger one: new table written and synced before the header switches to it. */
  private async growL1(entries: number): Promise<void> {
    const md = this.md;
    if (entries <= md.header.l1Size) return;
    if (entries * 8 > MAX_L1_BYTES)
      throw new EngineError("NO_SPACE", "qcow2: L1 table would exceed 32 MiB", {
        reason: "QCOW2_L1_TOO_LARGE",
      });
    const cs = md.clusterSize;
    const bytes = alignUp(entries * 8, cs);
    const offset = await md.refcounts.allocateFresh(bytes / cs);
    await md.flush(); // refcounts of the new table and every pending L1/L2 change are durable first
    const next = Buffer.alloc(entries * 8);
    next.set(md.l1.subarray(0, Math.min(md.l1.length, next.length)));
    const padded = Buffer.alloc(bytes);
    padded.set(next);
    await md.file.write(offset, padded, { point: "l1_grow.write_table" });
    md.noteWrite();
    await md.barrier();
    const old = { offset: md.header.l1TableOffset, bytes: alignUp(md.header.l1Size * 8, cs) };
    await md.writeCountOffsetPair(FIELD.l1Size, false, entries, offset, "l1_grow.activate_table");
    md.header.l1Size = entries;
    md.header.l1TableOffset = offset;
    md.replaceL1(next);
    if (old.bytes > 0 && old.offset !== 0) md.refcounts.free(old.offset, old.bytes / cs);
  }

  /** Makes completed writes durable; writes still in flight are not waited for. */
  flush(opts?: IoOptions): Promise<void> {
    return this.mutating(async () => {
      throwIfAborted(opts?.signal);
      await this.md.flush();
    }, false);
  }

  check(opts: { repair: RepairMode; signal?: AbortSignal }): Promise<CheckResult> {
    return this.lock.run(async () => {
      if (opts.repair !== "none" && this.readOnly) {
        throw new EngineError("READ_ONLY", "qcow2: repair needs a writable image", { reason: "READ_ONLY" });
      }
      await this.md.inflight.drainWrites();
      if (!this.readOnly && !this.md.corruptDetected && !this.md.writeFailure) await this.md.flush();
      const result = await checkImage(this.md, opts.repair, opts.signal);
      if (opts.repair === "all" && result.corruptions === 0 && !this.readOnly) {
        // A clean double-check allows clearing the corrupt and dirty bits (QEMU does the same).
        this.md.corruptDetected = false;
        if ((this.md.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n) {
          this.md.header.incompatibleFeatures &= ~INCOMPAT_CORRUPT;
          await this.md.writeFeatureField(FIELD.incompatible, this.md.header.incompatibleFeatures);
        }
        await this.md.markClean();
      }
      return result;
    });
  }

  setBackingLink(link: BackingLink | undefined, backing: BlockImage | undefined): Promise<void> {
    return this.mutating(async () => {
      this.assertWritable();
      if (link && Buffer.byteLength(link.fileName, "utf8") > MAX_BACKING_NAME) {
        throw new EngineError("INVALID_ARGUMENT", "qcow2: backing file name too long", {
          reason: "QCOW2_BACKING_NAME_TOO_LONG",
        });
      }
      await this.md.flush();
      const next = withBackingFormat({ ...this.md.header, backingFile: link?.fileName }, link?.format);
      await this.md.rewriteHeader(next);
      this.backing = backing;
    });
  }

  details(): FormatDetails {
    const h = this.md.header;
    const backingFormat = backingFormatOf(h);
    return {
      qcow2: {
        version: h.version,
        compat: h.version === 2 ? "0.10" : "1.1",
        clusterSize: this.md.clusterSize,
        refcountBits: this.md.layout.refcountBits,
        lazyRefcounts: (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
        dirty: (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
        corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n || this.md.corruptDetected,
        extendedL2: (h.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n,
        ...(h.backingFile !== undefined ? { backingFile: h.backingFile } : {}),
        ...(backingFormat !== undefined ? { backingFormat } : {}),
        snapshots: h.nbSnapshots,
      },
    };
  }

  physicalBytes(): Promise<number> {
    return this.file.allocatedBytes();
  }

  /** Flushes and, when refcounts are consistent, clears the dirty bit left by lazy refcounts. */
  async release(): Promise<void> {
    await this.lock.run(async () => {
      if (this.closed) return;
      this.closed = true;
      await this.md.inflight.drainWrites();
      if (this.readOnly || this.md.corruptDetected || this.md.writeFailure) return;
      await this.md.flush();
      await this.md.markClean();
    });
  }

  async close(): Promise<void> {
    try {
      await this.release();
    } finally {
      await this.file.close();
    }
  }
}

/**
 * Preallocates [from, to) per `opts.prealloc` in steps, reporting progress after each and honouring
 * the signal between them. Each step leaves complete metadata in the caches; they are flushed (one
 * ordered flush, not one per step) every PREALLOC_FLUSH_BYTES, at the end, and when the operation is
 * cancelled, so stopping still leaves a valid image with a preallocated prefix.
 */
export async function preallocateRange(
  img: Qcow2Image,
  from: number,
  to: number,
  opts: Pick<TruncateOptions, "prealloc" | "signal" | "onProgress">,
): Promise<void> {
  if (opts.prealloc === "off" || to <= from) return;
  const md = img.md;
  const total = to - from;
  const step = preallocStep(total, md.clusterSize);
  let unflushed = 0;
  try {
    for (let pos = from; pos < to; ) {
      throwIfAborted(opts.signal);
      const stepEnd = Math.min(to, alignUp(pos + step, md.clusterSize));
      const runs = await preallocateClusters(md, pos, stepEnd);
      for (const [host, bytes] of runs) {
        if (opts.prealloc === "falloc") {
          await md.file.allocate(host, bytes);
        } else if (opts.prealloc === "full") {
          await fillWithZeros(md.file, host, bytes, { signal: opts.signal, point: "prealloc_write" });
        }
        md.noteWrite();
      }
      unflushed += stepEnd - pos;
      if (unflushed >= PREALLOC_FLUSH_BYTES) {
        await md.flush();
        await md.trimCaches(); // a terabyte preallocation must not keep every L2 table it wrote
        unflushed = 0;
      }
      pos = stepEnd;
      opts.onProgress?.(pos - from, total, "preallocate");
    }
  } catch (err) {
    // Cancelled between (or inside) steps: the finished steps' metadata is consistent; make it durable.
    if (err instanceof EngineError && (err.code === "CANCELLED" || err.code === "DEADLINE_EXCEEDED"))
      await md.flush();
    throw err;
  }
  await md.flush();
}

/**
 * Guest bytes per preallocation step: at least PREALLOC_MIN_STEPS steps so a job shows progress,
 * at most PREALLOC_MAX_STEP bytes so cancellation stays prompt, whole clusters.
 */
function preallocStep(total: number, clusterSize: number): number {
  return Math.max(
    clusterSize,
    Math.min(PREALLOC_MAX_STEP, alignUp(Math.ceil(total / PREALLOC_MIN_STEPS), clusterSize)),
  );
}

/** A host I/O failure (errno or failed fsync), as opposed to a refused request or detected corruption. */
function isHostFailure(err: unknown): err is EngineError {
  return err instanceof EngineError && err.reason.startsWith("HOST_");
}

function writeFailedError(first: EngineError): EngineError {
  return new EngineError(first.code, "qcow2: an earlier write to this image failed; reopen it to continue", {
    reason: "QCOW2_WRITE_FAILED",
    metadata: { firstReason: first.reason },
    cause: first,
  });
}
