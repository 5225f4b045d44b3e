import type { HostFile } from "../../host/host-file.js";

interface CacheEntry {
  data: Buffer;
  dirty: boolean;
  /** Installed and never written yet: its first write is an allocation, not an update. */
  fresh: boolean;
  /** Requests in flight that will still change this table (never evicted while > 0). */
  pins: number;
}

/** Write point names (IoOptions.point) for a cache's first write of a new table and for later updates. */
export interface CachePoints {
  alloc: string;
  update: string;
}

/**
 * A write-back cache of one kind of cluster-sized metadata table (L2 tables or refcount blocks),
 * kept in LRU order. It never writes on its own: `writeDirty` is called by the image's ordered flush
 * (Qcow2Metadata.flush), which is where the crash-ordering rules live — refcount blocks before the
 * tables that reference new clusters, L2 before L1, decrements only after references are durable.
 * Entries are only evicted between top-level operations (`trim`), so a table buffer obtained inside
 * an operation stays the cached one until the operation ends; a request that changes a table after its
 * lock is released (an allocating write linking its L2 entry once the data is written) pins it.
 */
export class MetadataCache {
  private readonly entries = new Map<number, CacheEntry>();

  constructor(
    private readonly file: HostFile,
    readonly tableBytes: number,
    readonly maxEntries: number,
    private readonly points: CachePoints,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** Returns the table at `offset`, reading it on a miss. The caller validated the offset. */
  async get(offset: number): Promise<Buffer> {
    const hit = this.entries.get(offset);
    if (hit) {
      this.entries.delete(offset);
      this.entries.set(offset, hit);
      return hit.data;
    }
    const data = Buffer.alloc(this.tableBytes);
    await this.file.readFull(offset, data);
    const again = this.entries.get(offset); // a concurrent miss may have loaded it meanwhile
    if (again) return again.data;
    this.entries.set(offset, { data, dirty: false, fresh: false, pins: 0 });
    return data;
  }

  /** The cached table at `offset`, or undefined — never reads, never reorders (lock-free lookups). */
  peek(offset: number): Buffer | undefined {
    return this.entries.get(offset)?.data;
  }

  pin(offset: number): void {
    const e = this.entries.get(offset);
    if (!e) throw new Error(`metadata cache: pinning an uncached table (${offset})`);
    e.pins++;
  }

  unpin(offset: number): void {
    const e = this.entries.get(offset);
    if (e && e.pins > 0) e.pins--;
  }

  /** Installs a table that does not exist on disk yet (zero-filled or a copy), marked dirty. */
  install(offset: number, contents?: Uint8Array): Buffer {
    const data = Buffer.alloc(this.tableBytes);
    if (contents) data.set(contents.subarray(0, this.tableBytes));
    this.entries.delete(offset);
    this.entries.set(offset, { data, dirty: true, fresh: true, pins: 0 });
    return data;
  }

  has(offset: number): boolean {
    return this.entries.has(offset);
  }

  markDirty(offset: number): void {
    const e = this.entries.get(offset);
    if (!e) throw new Error(`metadata cache: marking an uncached table dirty (${offset})`);
    e.dirty = true;
  }

  /** Forgets a table (it was freed); its dirty contents no longer matter. */
  drop(offset: number): void {
    this.entries.delete(offset);
  }

  hasDirty(): boolean {
    for (const e of this.entries.values()) if (e.dirty) return true;
    return false;
  }

  /**
   * Writes all dirty tables, coalescing tables adjacent on disk into one request. Returns whether it wrote.
   * The tables are copied and marked clean synchronously, before the first write: an entry changed while
   * the writes are in flight (a write linking its new cluster) is not in this write-back — whose data
   * barrier came before that cluster's data — and leaves its table dirty for the next one.
   */
  async writeDirty(): Promise<boolean> {
    const dirty = [...this.entries.entries()].filter(([, e]) => e.dirty).sort((a, b) => a[0] - b[0]);
    if (dirty.length === 0) return false;
    const groups: Array<{ start: number; buffers: Buffer[]; fresh: boolean }> = [];
    let group: { start: number; buffers: Buffer[]; fresh: boolean } | undefined;
    for (const [offset, entry] of dirty) {
      const copy = Buffer.from(entry.data);
      const fresh = entry.fresh;
      entry.dirty = false;
      entry.fresh = false;
      if (group && offset === group.start + group.buffers.length * this.tableBytes && fresh === group.fresh) {
        group.buffers.push(copy);
        continue;
      }
      group = { start: offset, buffers: [copy], fresh };
      groups.push(group);
    }
    try {
      for (const g of groups)
        await this.file.writev(g.start, g.buffers, {
          point: g.fresh ? this.points.alloc : this.points.update,
        });
    } catch (err) {
      // Not written: still dirty (the handle stops writing after a host failure, but close must not lie).
      for (const g of groups) {
        for (let k = 0; k < g.buffers.length; k++) {
          const e = this.entries.get(g.start + k * this.tableBytes);
          if (!e) continue;
          e.dirty = true;
          e.fresh ||= g.fresh;
        }
      }
      throw err;
    }
    return true;
  }

  overCapacity(): boolean {
    return this.entries.size > this.maxEntries;
  }

  /** Evicts clean entries in LRU order until within capacity. */
  trim(): void {
    if (this.entries.size <= this.maxEntries) return;
    for (const [offset, e] of this.entries) {
      if (this.entries.size <= this.maxEntries) break;
      if (!e.dirty && e.pins === 0) this.entries.delete(offset);
    }
  }

  clear(): void {
    this.entries.clear();
  }
}
