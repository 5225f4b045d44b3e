import { writeU32, writeU64 } from "../../binary/big-endian.js";
import { EngineError } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import { MetadataCache } from "./cache.js";
import { corrupt } from "./errors.js";
import {
  FIELD,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTENDED_L2,
  type Qcow2Header,
  serializedHeaderLength,
  serializeHeader,
} from "./header.js";
import { InflightIo } from "./inflight.js";
import { classifyL1Entry, type EntryContext, encodeL1Entry } from "./l2-entry.js";
import { consecutiveRuns, type Layout, makeLayout } from "./layout.js";
import { RefcountManager } from "./refcount.js";
import type { SnapshotEntry } from "./snapshot.js";

const L2_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * The open image's metadata: header, the whole active L1 table in memory, the L2 cache and the
 * refcounts — and the one ordered flush that makes them durable:
 *   data → refcount blocks → refcount table → L2 tables → L1 → (then) deferred decrements.
 * Each arrow is an fdatasync, skipped when nothing was written since the last one.
 */
export class Qcow2Metadata {
  readonly layout: Layout;
  readonly ctx: EntryContext;
  l1: Buffer;
  l1View: DataView;
  private readonly dirtyL1Sectors = new Set<number>();
  readonly l2: MetadataCache;
  refcounts!: RefcountManager;
  snapshots: SnapshotEntry[] = [];
  /** Bytes of the snapshot table (for refcount checks). */
  snapshotTableBytes = 0;
  /** Something was written since the last fdatasync. */
  private unsynced = false;
  /**
   * False while a new image is being built (createQcow2): nothing refers to the file yet and a crash
   * loses it whole, so the ordering fdatasyncs between the stages of a flush buy nothing; each flush
   * then ends with a single one. Preallocating a new image otherwise pays five in a row.
   */
  orderedFlush = true;
  /** The first host I/O failure of a mutating operation: writes stop until the image is reopened. */
  writeFailure: EngineError | undefined;
  /** Set once corruption was detected: writes stop. */
  corruptDetected = false;
  /** Lazy refcounts in effect: the dirty bit is set before the first metadata change. */
  lazyRefcounts = false;
  /** Data I/O running outside the image lock. */
  readonly inflight = new InflightIo();

  constructor(
    readonly file: HostFile,
    public header: Qcow2Header,
    l1: Buffer,
  ) {
    this.layout = makeLayout(
      header.clusterBits,
      header.refcountOrder,
      (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n,
    );
    this.ctx = {
      version: header.version,
      clusterBits: header.clusterBits,
      extendedL2: (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n,
    };
    this.l1 = l1;
    this.l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    const l2Bytes = this.layout.clusterSize;
    this.l2 = new MetadataCache(file, l2Bytes, Math.max(16, Math.floor(L2_CACHE_BYTES / l2Bytes)), {
      alloc: "l2_alloc",
      update: "l2_update",
    });
  }

  /** Installs a refcount manager over `table` (at `tableOffset`), e.g. after open or a rebuild. */
  installRefcounts(table: Buffer, tableOffset: number, tableClusters: number, allocEnd: number): void {
    const manager = new RefcountManager(this.file, this.layout, table, allocEnd, {
      barrier: async () => {
        this.noteWrite();
        await this.barrier();
      },
      switchRefcountTable: async (offset, clusters) => {
        await this.writeCountOffsetPair(
          FIELD.refcountTable,
          true,
          clusters,
          offset,
          "reftable_grow.switch_table",
        );
        this.header.refcountTableOffset = offset;
        this.header.refcountTableClusters = clusters;
      },
    });
    manager.currentTable = { offset: tableOffset, clusters: tableClusters };
    this.refcounts = manager;
  }

  get clusterSize(): number {
    return this.layout.clusterSize;
  }

  get l1Entries(): number {
    return this.l1.length / 8;
  }

  /** The L2 table offset for L1 index `i` (0 = none), validated against the image end. */
  l2OffsetAt(i: number): { l2Offset: number; copied: boolean } {
    if (i >= this.header.l1Size) return { l2Offset: 0, copied: false };
    const entry = classifyL1Entry(
      this.l1View.getUint32(i * 8),
      this.l1View.getUint32(i * 8 + 4),
      this.clusterSize,
      i,
    );
    if (entry.l2Offset !== 0 && entry.l2Offset + this.clusterSize > this.refcounts.allocEnd) {
      throw corrupt(
        "QCOW2_L2_OUT_OF_RANGE",
        `L2 table at ${entry.l2Offset} lies outside the image (L1 index ${i})`,
      );
    }
    if (entry.l2Offset === 0 && entry.copied)
      throw corrupt("QCOW2_L1_ENTRY_INVALID", `L1 entry ${i} has COPIED without a table`);
    return entry;
  }

  setL1Entry(i: number, l2Offset: number, copied: boolean): void {
    const { hi, lo } = l2Offset === 0 ? { hi: 0, lo: 0 } : encodeL1Entry(l2Offset, copied);
    this.l1View.setUint32(i * 8, hi);
    this.l1View.setUint32(i * 8 + 4, lo);
    this.dirtyL1Sectors.add(Math.floor((i * 8) / 512));
  }

  /** Replaces the in-memory L1 (after a relocation the caller already made durable). */
  replaceL1(l1: Buffer): void {
    this.l1 = l1;
    this.l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.dirtyL1Sectors.clear();
  }

  noteWrite(): void {
    this.unsynced = true;
  }

  async barrier(): Promise<void> {
    if (!this.orderedFlush) return;
    await this.sync();
  }

  /** fdatasync if anything was written since the last one. */
  private async sync(): Promise<void> {
    if (!this.unsynced) return;
    this.unsynced = false;
    await this.file.flush({ point: "flush" });
  }

  /** Fails writes once the image is known to be corrupt. */
  assertWritable(): void {
    if (this.corruptDetected || (this.header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n) {
      throw new EngineError(
        "CORRUPT",
        "qcow2: image is marked corrupt; writes are refused until it is repaired",
        {
          reason: "QCOW2_CORRUPT",
        },
      );
    }
  }

  /** Writes one 64-bit header field in place and syncs (a single small write inside sector 0). */
  async writeFeatureField(field: number, value: bigint): Promise<void> {
    const buf = Buffer.alloc(8);
    writeU64(buf, 0, value);
    await this.barrier();
    await this.file.write(field, buf, { point: "header_update" });
    this.noteWrite();
    await this.barrier();
  }

  /** Rewrites a 4-byte count + 8-byte offset pair (L1, refcount table, snapshots) in one write, synced. */
  async writeCountOffsetPair(
    field: number,
    offsetFirst: boolean,
    count: number,
    offset: number,
    point: string,
  ): Promise<void> {
    const buf = Buffer.alloc(12);
    if (offsetFirst) {
      writeU64(buf, 0, offset);
      writeU32(buf, 8, count);
    } else {
      writeU32(buf, 0, count);
      writeU64(buf, 4, offset);
    }
    await this.barrier();
    await this.file.write(field, buf, { point });
    this.noteWrite();
    await this.barrier();
  }

  async writeSize(size: number): Promise<void> {
    const buf = Buffer.alloc(8);
    writeU64(buf, 0, size);
    await this.barrier();
    await this.file.write(FIELD.size, buf, { point: "header_update.size" });
    this.noteWrite();
    await this.barrier();
    this.header.size = size;
  }

  /** Rewrites header + extensions + backing name in one write (must fit in cluster 0). */
  async rewriteHeader(next: Qcow2Header): Promise<void> {
    const length = serializedHeaderLength(next);
    if (length > this.clusterSize) {
      throw new EngineError(
        "INVALID_ARGUMENT",
        "qcow2: header and backing name do not fit in the first cluster",
        {
          reason: "QCOW2_HEADER_TOO_LARGE",
        },
      );
    }
    const bytes = serializeHeader(next);
    const padded = Buffer.alloc(
      Math.min(this.clusterSize, Math.max(length, serializedHeaderLength(this.header))),
    );
    padded.set(bytes);
    await this.barrier();
    await this.file.write(0, padded, { point: "header_update.rewrite" });
    this.noteWrite();
    await this.barrier();
    this.header = next;
  }

  /** Sets the dirty bit before the first metadata change when lazy refcounts are in use. */
  async markDirtyIfLazy(): Promise<void> {
    if (!this.lazyRefcounts || (this.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n) return;
    this.header.incompatibleFeatures |= INCOMPAT_DIRTY;
    await this.writeFeatureField(FIELD.incompatible, this.header.incompatibleFeatures);
  }

  async markClean(): Promise<void> {
    if ((this.header.incompatibleFeatures & INCOMPAT_DIRTY) === 0n) return;
    this.header.incompatibleFeatures &= ~INCOMPAT_DIRTY;
    await this.writeFeatureField(FIELD.incompatible, this.header.incompatibleFeatures);
  }

  /** Records detected corruption: the corrupt bit goes to disk (best effort) and all writes stop. */
  async markCorrupt(): Promise<void> {
    if (this.corruptDetected) return;
    this.corruptDetected = true;
    if (this.file.readOnly || this.header.version < 3) return;
    this.header.incompatibleFeatures |= INCOMPAT_CORRUPT;
    try {
      await this.writeFeatureField(FIELD.incompatible, this.header.incompatibleFeatures);
    } catch {
      // The in-memory flag already stops writes; a failing host must not hide the corruption error.
    }
  }

  hasDirtyMetadata(): boolean {
    return (
      this.refcounts.hasDirty() ||
      this.refcounts.hasDirtyTable() ||
      this.l2.hasDirty() ||
      this.dirtyL1Sectors.size > 0 ||
      this.refcounts.hasPendingFrees()
    );
  }

  /** The ordered write-back of all metadata (see the class comment). */
  async flush(): Promise<void> {
    if (this.file.readOnly) return;
    if (this.hasDirtyMetadata()) {
      // Clusters referenced but never written (preallocation, new tables) must lie inside the file.
      if ((await this.file.size()) < this.refcounts.allocEnd) {
        await this.file.truncate(this.refcounts.allocEnd);
        this.noteWrite();
      }
    }
    if (this.refcounts.hasDirty()) {
      await this.barrier();
      await this.refcounts.blocks.writeDirty();
      this.noteWrite();
    }
    if (this.refcounts.hasDirtyTable()) {
      await this.barrier();
      await this.refcounts.writeDirtyTable();
      this.noteWrite();
    }
    if (this.l2.hasDirty()) {
      // Writes outside the lock may complete (and link their L2 entries) during the barrier: sync again
      // until none did, so every entry in the write-back below has its data durable.
      do {
        await this.barrier();
      } while (this.unsynced && this.orderedFlush);
      await this.l2.writeDirty();
      this.noteWrite();
    }
    if (this.dirtyL1Sectors.size > 0) {
      await this.barrier();
      await this.writeDirtyL1();
      this.noteWrite();
    }
    if (this.refcounts.hasPendingFrees()) {
      await this.barrier();
      const freed = await this.refcounts.applyPendingFrees();
      // Frees may free refcount-block space only; they never allocate, so one pass suffices.
      await this.refcounts.blocks.writeDirty();
      this.noteWrite();
      await this.barrier();
      // A read or in-place write that looked the cluster up before it was freed may still be running.
      await this.inflight.settleCurrent();
      this.refcounts.makeReusable(freed);
    }
    await this.sync();
  }

  private async writeDirtyL1(): Promise<void> {
    const sectors = [...this.dirtyL1Sectors].sort((a, b) => a - b);
    this.dirtyL1Sectors.clear();
    for (const { first, last } of consecutiveRuns(sectors)) {
      const start = first * 512;
      const end = Math.min((last + 1) * 512, this.l1.length);
      await this.file.write(this.header.l1TableOffset + start, this.l1.subarray(start, end), {
        point: "l1_update",
      });
    }
  }

  /** Called between top-level operations: keeps caches within bounds, flushing if they are full of dirty tables. */
  async trimCaches(): Promise<void> {
    if (this.l2.overCapacity() || this.refcounts.blocks.overCapacity()) {
      this.l2.trim();
      this.refcounts.blocks.trim();
      if (this.l2.overCapacity() || this.refcounts.blocks.overCapacity()) {
        await this.flush();
        this.l2.trim();
        this.refcounts.blocks.trim();
      }
    }
  }
}
