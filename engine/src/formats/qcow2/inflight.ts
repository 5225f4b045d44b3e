/**
 * Data I/O that runs outside the image lock (QEMU drops s->lock around data I/O the same way):
 * reads and in-place writes of mapped clusters, and the data of allocating writes, whose L2 entries
 * are linked only once the data is written. Tracked so that
 *  - a request touching a guest cluster whose allocation is in flight waits for it (QEMU's
 *    handle_dependencies), instead of allocating that cluster a second time;
 *  - operations that rewrite mappings wholesale (zeroing, discard, resize, check, close) first wait
 *    for every write in flight;
 *  - freed clusters become reusable only after the reads and writes that may still target them ended.
 */
export class InflightIo {
  private readonly all = new Set<Promise<unknown>>();
  private readonly writes = new Set<Promise<unknown>>();
  /** Guest cluster index → settles once that cluster's allocating write linked (or failed). */
  private readonly allocations = new Map<number, Promise<void>>();

  get writesInFlight(): number {
    return this.writes.size;
  }

  /** Registers `io` until it settles; returns it. */
  track<T>(io: Promise<T>, isWrite: boolean): Promise<T> {
    const settled = io.then(
      () => undefined,
      () => undefined,
    );
    this.all.add(settled);
    if (isWrite) this.writes.add(settled);
    void settled.then(() => {
      this.all.delete(settled);
      this.writes.delete(settled);
    });
    return io;
  }

  allocationAt(guestCluster: number): Promise<void> | undefined {
    return this.allocations.get(guestCluster);
  }

  /** Marks guest clusters as being allocated until the returned function is called. */
  beginAllocations(guestClusters: readonly number[]): () => void {
    let done!: () => void;
    const settled = new Promise<void>((resolve) => {
      done = resolve;
    });
    for (const c of guestClusters) this.allocations.set(c, settled);
    return () => {
      for (const c of guestClusters) if (this.allocations.get(c) === settled) this.allocations.delete(c);
      done();
    };
  }

  /** Waits until no write is in flight. Callers hold the image lock, so no new one starts meanwhile. */
  async drainWrites(): Promise<void> {
    while (this.writes.size > 0) await Promise.all([...this.writes]);
  }

  /** Waits for the I/O in flight now (not for I/O started later). */
  async settleCurrent(): Promise<void> {
    if (this.all.size > 0) await Promise.all([...this.all]);
  }
}
