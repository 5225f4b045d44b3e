import type { BlockImage } from "../block-image.js";
import { blockStatusAbove } from "../core/block-status-above.js";
import { readAt, writeAt, writeZeroesAt } from "../core/io.js";
import { EngineError, throwIfAborted } from "../errors.js";
import type { ProgressFn } from "../types.js";

/**
 * The Allocate operation: make a range of the top layer independent of (part of) its backing chain
 * without changing what the range reads as.
 * - copy-up: copy in every run some lower layer provides; runs no layer provides stay holes.
 * - full: additionally allocate every remaining run in the top layer as zeros.
 * - metadata: like full, but zero runs are allocated as metadata only where the format can (qcow2 zero
 *   clusters); data below is still copied, since metadata cannot reference another layer's clusters.
 */
export type AllocateMode = "copy-up" | "full" | "metadata";

export interface AllocateOptions {
  offset: number;
  length: number;
  mode: AllocateMode;
  /** Copy only from layers above this one; it (and what is below it) stays the backing. */
  base?: BlockImage;
  signal?: AbortSignal;
  onProgress?: ProgressFn;
}

export interface AllocateResult {
  copiedBytes: number;
  zeroedBytes: number;
  unchangedBytes: number;
}

/** Largest piece read and written at once when copying up. */
const COPY_CHUNK = 4 << 20;

export async function allocateRange(top: BlockImage, opts: AllocateOptions): Promise<AllocateResult> {
  const { mode, base, signal } = opts;
  if (top.readOnly) throw new EngineError("READ_ONLY", "volume is read-only", { reason: "READ_ONLY" });
  const alignment = top.limits.discardAlignment;
  // Work on whole clusters: a partial cluster at either end is widened, which never changes content.
  const start = Math.floor(opts.offset / alignment) * alignment;
  const end = Math.min(top.virtualSize, Math.ceil((opts.offset + opts.length) / alignment) * alignment);
  if (opts.offset < 0 || opts.length < 0 || opts.offset + opts.length > top.virtualSize) {
    throw new EngineError("OUT_OF_RANGE", "range lies past the end of the volume", { reason: "RANGE_PAST_END" });
  }
  const total = end - start;
  const result: AllocateResult = { copiedBytes: 0, zeroedBytes: 0, unchangedBytes: 0 };
  let pos = start;
  opts.onProgress?.(0, total, "allocating");
  while (pos < end) {
    throwIfAborted(signal);
    const { status, depth, present } = await blockStatusAbove(top, base, pos, end - pos, { signal });
    const runEnd = Math.min(end, pos + status.length);
    const runLength = runEnd - pos;
    if (depth === 0 && status.allocated) {
      result.unchangedBytes += runLength;
    } else if (present && status.data) {
      // Data lives below: copy it up in chunks; each chunk is a safe point for cancellation.
      for (let p = pos; p < runEnd; p += COPY_CHUNK) {
        throwIfAborted(signal);
        const n = Math.min(COPY_CHUNK, runEnd - p);
        const bytes = await readAt(top, p, n, { signal });
        await writeAt(top, p, bytes, { signal });
        result.copiedBytes += n;
        opts.onProgress?.(p + n - start, total, "copying");
      }
    } else if (present) {
      // A lower layer holds explicit zeros. Without them, whatever stays below (the base) would show
      // through once the chain is cut there, so keep them as zeros in the top layer. With no base the
      // whole chain goes away and an unallocated run reads as zeros anyway, so copy-up keeps the hole.
      if (base || mode !== "copy-up") {
        await writeZeroesAt(top, pos, runLength, { signal, mayUnmap: false });
        result.zeroedBytes += runLength;
      } else {
        result.unchangedBytes += runLength;
      }
    } else if (mode !== "copy-up") {
      // Nothing above the base provides this run. Full/metadata allocate it in the top layer — but with a
      // base, "zeros" would be wrong (the base shows through today), so copy the base's content instead.
      if (base) {
        for (let p = pos; p < runEnd; p += COPY_CHUNK) {
          throwIfAborted(signal);
          const n = Math.min(COPY_CHUNK, runEnd - p);
          await writeAt(top, p, await readAt(top, p, n, { signal }), { signal });
          result.copiedBytes += n;
        }
      } else {
        await writeZeroesAt(top, pos, runLength, { signal, mayUnmap: false });
        result.zeroedBytes += runLength;
      }
    } else {
      result.unchangedBytes += runLength;
    }
    pos = runEnd;
    opts.onProgress?.(pos - start, total, "allocating");
  }
  await top.flush({ signal });
  return result;
}

/**
 * Flatten: copy up everything above `base` (or everything), then point the top layer's header at
 * `base` (or at nothing) in one atomic header update. Content never changes.
 */
export async function flattenImage(
  top: BlockImage,
  opts: { base?: BlockImage; baseLink?: import("../block-image.js").BackingLink; signal?: AbortSignal; onProgress?: ProgressFn },
): Promise<AllocateResult> {
  if (opts.base && !opts.baseLink) throw new EngineError("INVALID_ARGUMENT", "a base needs its backing link", { reason: "BASE_LINK_REQUIRED" });
  // Already flat: nothing to copy and no link to drop (and formats without backing links, like raw, qualify).
  if (top.backing === undefined && opts.base === undefined) {
    opts.onProgress?.(top.virtualSize, top.virtualSize, "done");
    return { copiedBytes: 0, zeroedBytes: 0, unchangedBytes: top.virtualSize };
  }
  const result = await allocateRange(top, {
    offset: 0,
    length: top.virtualSize,
    mode: "copy-up",
    base: opts.base,
    signal: opts.signal,
    onProgress: opts.onProgress,
  });
  throwIfAborted(opts.signal);
  await top.setBackingLink(opts.baseLink, opts.base);
  return result;
}
