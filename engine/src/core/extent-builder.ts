import { EngineError } from "../errors.js";
import type { Extent } from "../types.js";

/**
 * Two extents describe one run when every reported property matches and, where host offsets are
 * reported, the second continues the first in the host file (the rule qemu-img map merges by).
 */
export function extentsMergeable(a: Extent, b: Extent): boolean {
  if (a.start + a.length !== b.start) return false;
  if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data) return false;
  if (a.compressed !== b.compressed) return false;
  if ((a.offset === undefined) !== (b.offset === undefined)) return false;
  return a.offset === undefined || b.offset === a.offset + a.length;
}

/**
 * An enforcing extent-list builder (nbdkit server/extents.c): extents must arrive ascending and
 * contiguous, are clipped to [start, end), zero-length ones are dropped and neighbours that describe one
 * run are merged. Completed extents are handed out by `drain()` as soon as they can no longer grow, so
 * a map of a huge image streams in bounded memory.
 */
export class ExtentBuilder {
  readonly start: number;
  readonly end: number;
  /** End of the last extent added (before clipping); the next one must start exactly here. */
  private cursor: number | undefined;
  private pending: Extent | undefined;
  private ready: Extent[] = [];
  private finished = false;

  constructor(start: number, end: number) {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
      throw new EngineError("INTERNAL", `invalid extent range [${start}, ${end})`);
    }
    this.start = start;
    this.end = end;
  }

  /** Where the next extent must start (the requested start until the first extent arrives). */
  get position(): number {
    return this.cursor ?? this.start;
  }

  /** True once the added extents cover the whole range. */
  get complete(): boolean {
    return this.position >= this.end;
  }

  add(extent: Extent): void {
    if (this.finished) throw new EngineError("INTERNAL", "extent added after finish()");
    if (!Number.isSafeInteger(extent.start) || !Number.isSafeInteger(extent.length) || extent.length < 0) {
      throw new EngineError("INTERNAL", `malformed extent ${extent.start}+${extent.length}`);
    }
    if (extent.length === 0) return;
    if (this.cursor === undefined) {
      if (extent.start > this.start) {
        throw new EngineError(
          "INTERNAL",
          `first extent starts at ${extent.start}, after the range start ${this.start}`,
        );
      }
    } else if (extent.start !== this.cursor) {
      throw new EngineError(
        "INTERNAL",
        `extent at ${extent.start} does not continue the previous one ending at ${this.cursor}`,
      );
    }
    const extentEnd = extent.start + extent.length;
    this.cursor = extentEnd;
    const clippedStart = Math.max(extent.start, this.start);
    const clippedEnd = Math.min(extentEnd, this.end);
    if (clippedEnd <= clippedStart) return;
    const clipped: Extent = { ...extent, start: clippedStart, length: clippedEnd - clippedStart };
    if (extent.offset !== undefined) clipped.offset = extent.offset + (clippedStart - extent.start);
    else delete clipped.offset;
    if (this.pending !== undefined && extentsMergeable(this.pending, clipped)) {
      this.pending.length += clipped.length;
      return;
    }
    if (this.pending !== undefined) this.ready.push(this.pending);
    this.pending = clipped;
  }

  /** Extents that are final (a later extent can no longer merge into them). */
  drain(): Extent[] {
    const out = this.ready;
    this.ready = [];
    return out;
  }

  /** Ends the list: returns the remaining extents and checks that the range was covered completely. */
  finish(): Extent[] {
    if (this.finished) throw new EngineError("INTERNAL", "finish() called twice");
    if (this.start < this.end && !this.complete) {
      throw new EngineError(
        "INTERNAL",
        `extents cover [${this.start}, ${this.position}) of [${this.start}, ${this.end})`,
      );
    }
    this.finished = true;
    const out = this.drain();
    if (this.pending !== undefined) out.push(this.pending);
    this.pending = undefined;
    return out;
  }
}
