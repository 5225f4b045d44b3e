/**
 * Lets a WriteVolume stream keep a few chunk writes running at once, so one chunk's disk write overlaps
 * the arrival and decoding of the next ones instead of costing a full threadpool round trip each.
 * Writes to overlapping ranges never run together (a later chunk waits for the earlier one it overlaps),
 * so the volume ends up as if the chunks were applied in stream order. The first failure is kept and
 * rethrown by the next call; writes already running finish before anyone is told.
 */
export class WriteWindow {
  private readonly running = new Map<Promise<void>, { start: number; end: number }>();
  private failure: { error: unknown } | undefined;

  constructor(private readonly depth: number) {}

  /** Starts `write` for [start, start + length) once there is room; resolves when it has started. */
  async add(start: number, length: number, write: () => Promise<void>): Promise<void> {
    this.throwIfFailed();
    const end = start + length;
    for (const [pending, range] of this.running) {
      if (range.start < end && start < range.end) await pending;
    }
    while (this.running.size >= this.depth) await Promise.race(this.running.keys());
    this.throwIfFailed();
    // The tracked promise never rejects: a failure is recorded and surfaces from the next add/drain.
    const tracked: Promise<void> = write()
      .catch((error: unknown) => {
        this.failure ??= { error };
      })
      .finally(() => this.running.delete(tracked));
    this.running.set(tracked, { start, end });
  }

  /** Waits for every running write; throws the first failure, if any. */
  async drain(): Promise<void> {
    await Promise.all(this.running.keys());
    this.throwIfFailed();
  }

  /** Waits for every running write and ignores failures (for error paths, before releasing the volume). */
  async settle(): Promise<void> {
    await Promise.all(this.running.keys());
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure.error;
  }
}
