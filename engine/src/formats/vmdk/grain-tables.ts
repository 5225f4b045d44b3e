import type { HostFile } from "../../host/host-file.js";
import { corrupt, unsupported } from "./errors.js";
import type { SparseLayout } from "./header.js";
import { encodeU32Table, readU32Table } from "./le.js";

/** Grain tables kept in memory at once (2 KiB each at 512 entries). */
const MAX_CACHED_TABLES = 1024;

interface CachedTable {
  entries: Uint32Array;
  /** Writers in flight on this table; a pinned table is never evicted, so no stale copy can be reloaded. */
  pins: number;
}

/**
 * The grain directory (both copies, in memory) and a bounded cache of primary grain tables. Each table
 * has exactly one in-memory copy at a time (loads are de-duplicated), so an update can't be lost to a
 * concurrent reload.
 */
export class GrainTables {
  private readonly cache = new Map<number, CachedTable>();
  private readonly loading = new Map<number, Promise<CachedTable>>();
  private readonly tableBytes: number;
  /** Bumped by every update, so a bulk read that raced with one doesn't cache what it read. */
  private readonly versions = new Map<number, number>();
  /** Tables whose on-disk copies may differ from memory since an update of them failed. */
  private readonly unsynced = new Set<number>();

  constructor(
    private readonly file: HostFile,
    private readonly layout: SparseLayout,
    readonly gd: Uint32Array,
    readonly rgd: Uint32Array | undefined,
  ) {
    this.tableBytes = layout.gtesPerGt * 4;
  }

  /** Reads both directories and checks that every table they name lies inside the file. */
  static async load(file: HostFile, layout: SparseLayout, fileSize: number): Promise<GrainTables> {
    const gd = await readDirectory(file, layout, layout.gdOffset, fileSize);
    const rgd =
      layout.rgdOffset === undefined
        ? undefined
        : await readDirectory(file, layout, layout.rgdOffset, fileSize);
    return new GrainTables(file, layout, gd, rgd);
  }

  /** The grain table entry for `grainIndex`: 0 = unallocated, 1 = zeroed (with the flag), else a sector. */
  async entry(grainIndex: number): Promise<number> {
    const gdIndex = Math.floor(grainIndex / this.layout.gtesPerGt);
    if (this.gd[gdIndex] === 0) return 0;
    const table = await this.table(gdIndex);
    return table.entries[grainIndex % this.layout.gtesPerGt]!;
  }

  /** Whether a grain table exists for this directory slot (QEMU preallocates all of them at create). */
  hasTable(gdIndex: number): boolean {
    return this.gd[gdIndex] !== 0 && (this.rgd === undefined || this.rgd[gdIndex] !== 0);
  }

  async readTable(gdIndex: number): Promise<Uint32Array | undefined> {
    if (this.gd[gdIndex] === 0) return undefined;
    return (await this.table(gdIndex)).entries;
  }

  /** Reads the redundant copy of one grain table straight from disk (check only). */
  async readRedundantTable(gdIndex: number): Promise<Uint32Array | undefined> {
    const sector = this.rgd?.[gdIndex];
    if (sector === undefined || sector === 0) return undefined;
    const raw = new Uint8Array(this.tableBytes);
    await this.file.readFull(sector * 512, raw);
    return readU32Table(raw, this.layout.gtesPerGt);
  }

  /**
   * Points `values.length` consecutive entries of one table at new grains (whose data is already
   * written): memory first, so readers see only written grains, then the primary and redundant copies.
   *
   * If a copy's write fails, what it left on disk is unknown (old entries, new ones, or one copy of
   * each), so memory keeps the new entries — their grains are durable, so pointing at them is safe — and
   * the table is marked unsynced: the next update of it, and the next flush, rewrite it whole before
   * anything more is acknowledged. Reverting memory instead would let a later write or zero write be
   * acknowledged against entries the disk does not hold (found by the vmdk fault matrix).
   */
  async setEntries(gdIndex: number, firstEntry: number, values: readonly number[]): Promise<void> {
    if (!this.hasTable(gdIndex)) {
      throw unsupported("VMDK_GT_MISSING", "no grain table is allocated for this region of the image");
    }
    const table = await this.table(gdIndex);
    table.pins++;
    this.versions.set(gdIndex, (this.versions.get(gdIndex) ?? 0) + 1);
    table.entries.set(values, firstEntry);
    try {
      if (this.unsynced.has(gdIndex)) await this.writeWhole(gdIndex, table);
      else await this.writeCopies(gdIndex, firstEntry * 4, encodeU32Table(values));
    } catch (err) {
      this.markUnsynced(gdIndex, table);
      throw err;
    } finally {
      table.pins--;
    }
  }

  /** Rewrites every table a failed update left unsynced; a flush calls it before the fsync. */
  async syncUnsynced(): Promise<void> {
    for (const gdIndex of [...this.unsynced]) {
      const table = this.cache.get(gdIndex);
      if (table !== undefined) await this.writeWhole(gdIndex, table);
    }
  }

  private async writeWhole(gdIndex: number, table: CachedTable): Promise<void> {
    await this.writeCopies(gdIndex, 0, encodeU32Table(table.entries));
    if (this.unsynced.delete(gdIndex)) table.pins--; // the pin markUnsynced took
  }

  private async writeCopies(gdIndex: number, at: number, bytes: Uint8Array): Promise<void> {
    await this.file.write(this.gd[gdIndex]! * 512 + at, bytes, { point: "gt_update" });
    if (this.rgd !== undefined)
      await this.file.write(this.rgd[gdIndex]! * 512 + at, bytes, { point: "gt_update.redundant" });
  }

  /** An unsynced table stays pinned: evicting it would reload what the disk holds and lose the entries. */
  private markUnsynced(gdIndex: number, table: CachedTable): void {
    if (this.unsynced.has(gdIndex)) return;
    this.unsynced.add(gdIndex);
    table.pins++;
  }

  /**
   * Loads up to `count` tables from `gdIndex` on with one read per run of tables that lie back to back
   * on disk (they do in QEMU's and our layout), for whole-image walks (map, check).
   */
  async prefetch(gdIndex: number, count: number): Promise<void> {
    const end = Math.min(this.gd.length, gdIndex + Math.min(count, MAX_CACHED_TABLES / 2));
    const stride = Math.ceil(this.tableBytes / 512);
    for (let first = gdIndex; first < end; ) {
      if (this.gd[first] === 0 || this.cache.has(first) || this.loading.has(first)) {
        first++;
        continue;
      }
      let last = first;
      while (
        last + 1 < end &&
        this.gd[last + 1] === (this.gd[last] ?? 0) + stride &&
        !this.cache.has(last + 1) &&
        !this.loading.has(last + 1)
      )
        last++;
      const versions = Array.from({ length: last - first + 1 }, (_, i) => this.versions.get(first + i) ?? 0);
      const raw = new Uint8Array((last - first) * stride * 512 + this.tableBytes);
      await this.file.readFull((this.gd[first] ?? 0) * 512, raw);
      for (let i = first; i <= last; i++) {
        if (this.cache.has(i) || this.loading.has(i) || (this.versions.get(i) ?? 0) !== versions[i - first])
          continue;
        const at = (i - first) * stride * 512;
        this.evictIfFull();
        this.cache.set(i, {
          entries: readU32Table(raw.subarray(at, at + this.tableBytes), this.layout.gtesPerGt),
          pins: 0,
        });
      }
      first = last + 1;
    }
  }

  private table(gdIndex: number): Promise<CachedTable> {
    const cached = this.cache.get(gdIndex);
    if (cached !== undefined) return Promise.resolve(cached);
    let pending = this.loading.get(gdIndex);
    if (pending === undefined) {
      pending = this.loadTable(gdIndex).finally(() => this.loading.delete(gdIndex));
      this.loading.set(gdIndex, pending);
    }
    return pending;
  }

  private async loadTable(gdIndex: number): Promise<CachedTable> {
    const raw = new Uint8Array(this.tableBytes);
    await this.file.readFull(this.gd[gdIndex]! * 512, raw);
    const table: CachedTable = { entries: readU32Table(raw, this.layout.gtesPerGt), pins: 0 };
    this.evictIfFull();
    this.cache.set(gdIndex, table);
    return table;
  }

  private evictIfFull(): void {
    if (this.cache.size < MAX_CACHED_TABLES) return;
    for (const [index, table] of this.cache) {
      if (table.pins === 0) {
        this.cache.delete(index);
        return;
      }
    }
  }
}

async function readDirectory(
  file: HostFile,
  layout: SparseLayout,
  offset: number,
  fileSize: number,
): Promise<Uint32Array> {
  const raw = new Uint8Array(layout.gdEntries * 4);
  await file.readFull(offset, raw);
  const gd = readU32Table(raw, layout.gdEntries);
  const tableBytes = layout.gtesPerGt * 4;
  for (const sector of gd) {
    if (sector !== 0 && sector * 512 + tableBytes > fileSize) {
      throw corrupt("VMDK_TABLE_OUT_OF_RANGE", `grain table at sector ${sector} lies outside the file`);
    }
  }
  return gd;
}
