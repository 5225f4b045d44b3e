import type { BlockImage } from "../block-image.js";
import { blockStatusAbove } from "../core/block-status-above.js";
import { readAt, writeAt, writeZeroesAt } from "../core/io.js";
import { EngineError, throwIfAborted } from "../errors.js";
import type { ProgressFn } from "../types.js";
import { type PipelineStep, runOrderedPipeline } from "./ordered-pipeline.js";

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

/** Largest piece read and written at once when copying up (aligned in guest offsets, as in copyImage). */
const COPY_CHUNK = 2 << 20;
/** Chunks in flight: reads of later chunks overlap writes of earlier ones. */
const IN_FLIGHT = 8;
/** What a zeroing step "reads": it needs no data, only its place in the write order. */
const NOTHING_READ = new Uint8Array(0);

export async function allocateRange(top: BlockImage, opts: AllocateOptions): Promise<AllocateResult> {
  const { mode, base, signal } = opts;
  if (top.readOnly) throw new EngineError("READ_ONLY", "volume is read-only", { reason: "READ_ONLY" });
  const alignment = top.limits.discardAlignment;
  // Work on whole clusters: a partial cluster at either end is widened, which never changes content.
  const start = Math.floor(opts.offset / alignment) * alignment;
  const end = Math.min(top.virtualSize, Math.ceil((opts.offset + opts.length) / alignment) * alignment);
  if (opts.offset < 0 || opts.length < 0 || opts.offset + opts.length > top.virtualSize) {
    throw new EngineError("OUT_OF_RANGE", "range lies past the end of the volume", {
      reason: "RANGE_PAST_END",
    });
  }
  const total = end - start;
  const result: AllocateResult = { copiedBytes: 0, zeroedBytes: 0, unchangedBytes: 0 };

  // Copies [from, to) of what the chain reads as into the top layer. Every step keeps what each byte
  // reads as, so a later step's read may overtake an earlier step's write of a neighbouring range.
  function* copySteps(from: number, to: number): Generator<PipelineStep<Uint8Array>> {
    for (let p = from; p < to; ) {
      const at = p;
      const n = Math.min(to, (Math.floor(at / COPY_CHUNK) + 1) * COPY_CHUNK) - at;
      yield {
        start: at,
        end: at + n,
        prepare: () => readAt(top, at, n, { signal }),
        commit: async (bytes) => {
          await writeAt(top, at, bytes, { signal });
          result.copiedBytes += n;
        },
      };
      p = at + n;
    }
  }
  const zeroStep = (from: number, to: number): PipelineStep<Uint8Array> => ({
    start: from,
    end: to,
    prepare: () => Promise.resolve(NOTHING_READ),
    commit: async () => {
      await writeZeroesAt(top, from, to - from, { signal, mayUnmap: false });
      result.zeroedBytes += to - from;
    },
  });
  const unchanged = (from: number, to: number): PipelineStep<Uint8Array> => {
    result.unchangedBytes += to - from;
    return { start: from, end: to };
  };

  async function* steps(): AsyncGenerator<PipelineStep<Uint8Array>> {
    let pos = start;
    while (pos < end) {
      const { status, depth, present } = await blockStatusAbove(top, base, pos, end - pos, { signal });
      const runEnd = Math.min(end, pos + status.length);
      if (depth === 0 && status.allocated) {
        yield unchanged(pos, runEnd);
      } else if (present && status.data) {
        // Data lives below: copy it up in chunks; each chunk is a safe point for cancellation.
        yield* copySteps(pos, runEnd);
      } else if (present) {
        // A lower layer holds explicit zeros. Without them, whatever stays below (the base) would show
        // through once the chain is cut there, so keep them as zeros in the top layer. With no base the
        // whole chain goes away and an unallocated run reads as zeros anyway, so copy-up keeps the hole.
        yield base || mode !== "copy-up" ? zeroStep(pos, runEnd) : unchanged(pos, runEnd);
      } else if (mode !== "copy-up") {
        // Nothing above the base provides this run. Full/metadata allocate it in the top layer — but with a
        // base, "zeros" would be wrong (the base shows through today), so copy the base's content instead.
        if (base) yield* copySteps(pos, runEnd);
        else yield zeroStep(pos, runEnd);
      } else {
        yield unchanged(pos, runEnd);
      }
      pos = runEnd;
    }
  }

  opts.onProgress?.(0, total, "allocating");
  await runOrderedPipeline(steps(), {
    maxInFlight: IN_FLIGHT,
    signal,
    onDone: (done) => opts.onProgress?.(done - start, total, "allocating"),
  });
  await top.flush({ signal });
  return result;
}

/**
 * Flatten: copy up everything above `base` (or everything), then point the top layer's header at
 * `base` (or at nothing) in one atomic header update. Content never changes.
 */
export async function flattenImage(
  top: BlockImage,
  opts: {
    base?: BlockImage;
    baseLink?: import("../block-image.js").BackingLink;
    signal?: AbortSignal;
    onProgress?: ProgressFn;
  },
): Promise<AllocateResult> {
  if (opts.base && !opts.baseLink)
    throw new EngineError("INVALID_ARGUMENT", "a base needs its backing link", {
      reason: "BASE_LINK_REQUIRED",
    });
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
