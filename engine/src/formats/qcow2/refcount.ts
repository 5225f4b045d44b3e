import { joinU64, splitNumber } from "../../binary/big-endian.js";
import { EngineError } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import { MetadataCache } from "./cache.js";
import { corrupt } from "./errors.js";
import { MAX_HOST_OFFSET, MAX_REFTABLE_BYTES } from "./header.js";
import { alignUp, consecutiveRuns, type Layout, refcountIndexOf } from "./layout.js";
import { claimZeroEntries, getRefcountEntry, maxRefcount, setRefcountEntry } from "./refcount-entry.js";

/** Hooks the refcount manager needs from the image to relocate the refcount table safely. */
export interface RefcountHost {
  /** fdatasync of the image file. */
  barrier(): Promise<void>;
  /** Rewrites header.refcount_table_offset + refcount_table_clusters (one 12-byte write) and syncs. */
  switchRefcountTable(offset: number, clusters: number): Promise<void>;
}

/**
 * Cluster refcounts: the refcount table (kept whole in memory), refcount blocks (cached), and cluster
 * allocation. New clusters come from a tracked end of the allocated area — the file is never grown
 * one cluster at a time — or from clusters freed earlier. Decrements are deferred (`free`) and only
 * applied by `applyPendingFrees`, which the ordered flush calls after the tables that dropped the
 * references are durable; only then do freed clusters become reusable.
 */
export class RefcountManager {
  table: Buffer;
  private tableView: DataView;
  /** 512-byte sectors of the table changed since the last flush. */
  private readonly dirtyTableSectors = new Set<number>();
  readonly blocks: MetadataCache;
  /** First byte after every cluster this image has allocated (cluster-aligned). */
  allocEnd: number;
  private readonly reusable: number[] = [];
  private readonly pendingFrees = new Map<number, number>();
  private readonly bits: number;

  constructor(
    private readonly file: HostFile,
    private readonly layout: Layout,
    table: Buffer,
    allocEnd: number,
    private readonly host: RefcountHost,
    cacheBytes = 4 * 1024 * 1024,
  ) {
    this.table = table;
    this.tableView = new DataView(table.buffer, table.byteOffset, table.byteLength);
    this.blocks = new MetadataCache(
      file,
      layout.clusterSize,
      Math.max(16, Math.floor(cacheBytes / layout.clusterSize)),
      { alloc: "refblock_alloc", update: "refblock_update" },
    );
    this.allocEnd = alignUp(allocEnd, layout.clusterSize);
    this.bits = layout.refcountBits;
  }

  get tableEntries(): number {
    return this.table.length / 8;
  }

  /** Refcount block offset for table index `i` (0 = none), validated. */
  blockOffset(i: number): number {
    if (i >= this.tableEntries) return 0;
    const hi = this.tableView.getUint32(i * 8);
    const lo = this.tableView.getUint32(i * 8 + 4);
    if ((lo & 0x1ff) !== 0)
      throw corrupt("QCOW2_REFBLOCK_UNALIGNED", `refblock offset unaligned (reftable index ${i})`);
    const offset = joinU64(hi, lo);
    if (offset > MAX_HOST_OFFSET || offset % this.layout.clusterSize !== 0) {
      throw corrupt("QCOW2_REFBLOCK_UNALIGNED", `refblock offset unaligned (reftable index ${i})`);
    }
    return offset;
  }

  private setBlockOffset(i: number, offset: number): void {
    const { hi, lo } = splitNumber(offset);
    this.tableView.setUint32(i * 8, hi);
    this.tableView.setUint32(i * 8 + 4, lo);
    this.dirtyTableSectors.add(Math.floor((i * 8) / 512));
  }

  private async loadBlock(i: number): Promise<Buffer | undefined> {
    const offset = this.blockOffset(i);
    if (offset === 0) return undefined;
    // allocEnd starts at the (cluster-aligned) file size and only grows.
    if (offset + this.layout.clusterSize > this.allocEnd) {
      throw corrupt("QCOW2_REFBLOCK_OUT_OF_RANGE", `refcount block at ${offset} lies outside the image`);
    }
    return this.blocks.get(offset);
  }

  async get(hostOffset: number): Promise<number> {
    const { tableIndex, blockIndex } = refcountIndexOf(this.layout, hostOffset);
    const block = await this.loadBlock(tableIndex);
    return block ? getRefcountEntry(block, blockIndex, this.bits) : 0;
  }

  /** How many clusters below `endCluster` are in use (refcount > 0); counting stops at `stopAt`. */
  async countInUse(endCluster: number, stopAt: number): Promise<number> {
    const perBlock = this.layout.refblockCoverage / this.layout.clusterSize;
    let count = 0;
    for (let first = 0; first < endCluster && count < stopAt; first += perBlock) {
      const block = await this.loadBlock(first / perBlock);
      if (!block) continue;
      const end = Math.min(endCluster - first, perBlock);
      for (let i = 0; i < end && count < stopAt; i++)
        if (getRefcountEntry(block, i, this.bits) !== 0) count++;
    }
    return count;
  }

  /** Adds `delta` to one cluster's refcount, creating refcount blocks (and growing the table) as needed. */
  async update(hostOffset: number, delta: number): Promise<number> {
    const { tableIndex, blockIndex } = refcountIndexOf(this.layout, hostOffset);
    if (tableIndex >= this.tableEntries) await this.growTable(tableIndex + 1);
    let block = await this.loadBlock(tableIndex);
    if (!block) block = await this.createBlock(tableIndex);
    const before = getRefcountEntry(block, blockIndex, this.bits);
    const after = before + delta;
    if (after < 0)
      throw corrupt("QCOW2_REFCOUNT_UNDERFLOW", `refcount of cluster at ${hostOffset} would drop below 0`);
    if (after > maxRefcount(this.bits)) {
      throw new EngineError("UNSUPPORTED", `qcow2: refcount overflow (${this.bits}-bit refcounts)`, {
        reason: "QCOW2_REFCOUNT_OVERFLOW",
      });
    }
    setRefcountEntry(block, blockIndex, this.bits, after);
    this.blocks.markDirty(this.blockOffset(tableIndex));
    return after;
  }

  /** A new refcount block at the end of the allocated area; it describes itself when it falls in its own range. */
  private async createBlock(tableIndex: number): Promise<Buffer> {
    // The block's own refcount must fall inside the table as it is: growing the table from inside this
    // call would write (and switch to) a table that references this block while its refcount existed
    // only in memory — a crash there leaves a refcount block with refcount 0 (found by the fault matrix).
    const ownIndex = refcountIndexOf(this.layout, this.allocEnd).tableIndex;
    if (ownIndex >= this.tableEntries) {
      await this.growTable(ownIndex + 1);
      const created = await this.loadBlock(tableIndex); // the growth may have created this very block
      if (created) return created;
    }
    const offset = this.allocEnd;
    this.allocEnd += this.layout.clusterSize;
    const block = this.blocks.install(offset);
    this.setBlockOffset(tableIndex, offset);
    await this.update(offset, 1);
    return block;
  }

  /**
   * Moves the refcount table to a larger one at the end of the allocated area: the new refcount
   * blocks and the new table are written and synced before the header switches to it; the old
   * table's clusters are freed afterwards.
   */
  private async growTable(minEntries: number): Promise<void> {
    const cs = this.layout.clusterSize;
    const oldTable = this.currentTable;
    let entries = Math.max(minEntries, this.tableEntries * 2);
    // Headroom for the table itself and the blocks describing it, so the growth settles in one step.
    for (;;) {
      const tableBytes = alignUp(entries * 8, cs);
      const endAfter = this.allocEnd + tableBytes + 4 * cs;
      const needed = Math.ceil(endAfter / this.layout.refblockCoverage) + 1;
      if (needed <= entries) break;
      entries = needed;
    }
    const tableBytes = alignUp(entries * 8, cs);
    if (tableBytes > MAX_REFTABLE_BYTES) {
      throw new EngineError("NO_SPACE", "qcow2: refcount table would exceed 8 MiB", {
        reason: "QCOW2_REFTABLE_TOO_LARGE",
      });
    }
    const newTable = Buffer.alloc(tableBytes);
    newTable.set(this.table);
    const tableOffset = this.allocEnd;
    this.allocEnd += tableBytes;
    this.table = newTable;
    this.tableView = new DataView(newTable.buffer, newTable.byteOffset, newTable.byteLength);
    for (let at = 0; at < tableBytes; at += cs) await this.update(tableOffset + at, 1);

    await this.blocks.writeDirty();
    await this.host.barrier();
    await this.file.write(tableOffset, this.table, { point: "reftable_grow.write_table" });
    this.dirtyTableSectors.clear();
    await this.host.barrier();
    await this.host.switchRefcountTable(tableOffset, tableBytes / cs);
    this.currentTable = { offset: tableOffset, clusters: tableBytes / cs };
    if (oldTable) this.free(oldTable.offset, oldTable.clusters);
  }

  /** Where the table currently lives on disk (set by the image after open/create). */
  currentTable: { offset: number; clusters: number } | undefined;

  /**
   * Allocates `count` contiguous clusters with refcount 1. Single clusters may reuse freed ones;
   * runs come from the end of the allocated area.
   */
  async allocate(count: number): Promise<number> {
    if (count === 1) {
      for (let offset = this.reusable.pop(); offset !== undefined; offset = this.reusable.pop()) {
        if ((await this.get(offset)) === 0) {
          await this.update(offset, 1);
          return offset;
        }
      }
    }
    return this.allocateFresh(count);
  }

  /** Allocates `count` clusters past every existing one: fresh clusters past the old end read as zeros. */
  async allocateFresh(count: number): Promise<number> {
    const cs = this.layout.clusterSize;
    // Past the end every refcount should be 0; a stale one (a leak) is skipped, never reused.
    for (;;) {
      const offset = this.allocEnd;
      if (offset + count * cs > MAX_HOST_OFFSET) {
        throw new EngineError("NO_SPACE", "qcow2: host offsets exhausted", {
          reason: "QCOW2_FILE_TOO_LARGE",
        });
      }
      this.allocEnd += count * cs;
      const taken = await this.claimFresh(offset, count);
      if (taken === count) return offset;
      // Undo the partial run; the stale cluster after it keeps its count and stays behind allocEnd.
      for (let i = 0; i < taken; i++) await this.update(offset + i * cs, -1);
      this.allocEnd = Math.max(this.allocEnd, offset + (taken + 1) * cs);
    }
  }

  /**
   * Raises the refcounts of up to `count` clusters from `offset` from 0 to 1, one refcount block at a
   * time (preallocating gigabytes claims tens of thousands of clusters; one update() each dominated
   * it). Stops before the first cluster whose refcount is not 0 and returns how many it claimed.
   */
  private async claimFresh(offset: number, count: number): Promise<number> {
    const cs = this.layout.clusterSize;
    let taken = 0;
    while (taken < count) {
      const { tableIndex, blockIndex } = refcountIndexOf(this.layout, offset + taken * cs);
      if (tableIndex >= this.tableEntries) await this.growTable(tableIndex + 1);
      const block = (await this.loadBlock(tableIndex)) ?? (await this.createBlock(tableIndex));
      const n = Math.min(count - taken, this.layout.refcountsPerBlock - blockIndex);
      const k = claimZeroEntries(block, blockIndex, n, this.bits);
      if (k > 0) this.blocks.markDirty(this.blockOffset(tableIndex));
      taken += k;
      if (k < n) break;
    }
    return taken;
  }

  /** Schedules a decrement for `count` clusters starting at `hostOffset` (applied after references are durable). */
  free(hostOffset: number, count = 1): void {
    const cs = this.layout.clusterSize;
    for (let i = 0; i < count; i++) {
      const at = hostOffset + i * cs;
      this.pendingFrees.set(at, (this.pendingFrees.get(at) ?? 0) + 1);
    }
  }

  hasPendingFrees(): boolean {
    return this.pendingFrees.size > 0;
  }

  /** Applies deferred decrements; clusters that reach 0 become reusable once these blocks are written. */
  async applyPendingFrees(): Promise<number[]> {
    const freed: number[] = [];
    const frees = [...this.pendingFrees.entries()];
    this.pendingFrees.clear();
    for (const [offset, count] of frees) {
      if ((await this.update(offset, -count)) === 0) freed.push(offset);
    }
    return freed;
  }

  makeReusable(offsets: number[]): void {
    this.reusable.push(...offsets.sort((a, b) => b - a));
  }

  hasDirty(): boolean {
    return this.blocks.hasDirty();
  }

  hasDirtyTable(): boolean {
    return this.dirtyTableSectors.size > 0;
  }

  /** Writes the changed sectors of the table in place. */
  async writeDirtyTable(): Promise<void> {
    if (!this.currentTable || this.dirtyTableSectors.size === 0) return;
    const sectors = [...this.dirtyTableSectors].sort((a, b) => a - b);
    this.dirtyTableSectors.clear();
    for (const { first, last } of consecutiveRuns(sectors)) {
      const start = first * 512;
      const end = Math.min((last + 1) * 512, this.table.length);
      await this.file.write(this.currentTable.offset + start, this.table.subarray(start, end), {
        point: "reftable_update",
      });
    }
  }
}
