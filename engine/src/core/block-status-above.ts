import type { BlockImage } from "../block-image.js";
import { EngineError, throwIfAborted } from "../errors.js";
import type { IoOptions, LayerStatus } from "../types.js";
import { assertInImage } from "./range.js";

/** Bound on chain walks: a chain is built by the caller, and a cycle must end in an error, not a hang. */
export const MAX_CHAIN_DEPTH = 1024;

export interface ChainStatus {
  /** The status of the run, clamped to the query and to every layer walked. */
  status: LayerStatus;
  /** Layer that resolved the run: 0 = top, 1 = its backing, ... */
  depth: number;
  /** Some layer above `base` determines the run's content (qemu-img map "present"). */
  present: boolean;
}

/**
 * Checks that `base` (when given) is a strict backing of `top`, and returns the number of layers above it.
 */
export function layersAbove(top: BlockImage, base: BlockImage | undefined): number {
  let count = 0;
  for (let layer: BlockImage | undefined = top; layer !== undefined; layer = layer.backing) {
    if (layer === base) {
      if (count === 0)
        throw new EngineError("INVALID_ARGUMENT", "base must lie below the top image", {
          reason: "BAD_BASE",
        });
      return count;
    }
    if (++count > MAX_CHAIN_DEPTH) {
      throw new EngineError("INVALID_ARGUMENT", `backing chain deeper than ${MAX_CHAIN_DEPTH}`, {
        reason: "CHAIN_TOO_DEEP",
      });
    }
  }
  if (base !== undefined) {
    throw new EngineError("INVALID_ARGUMENT", "base is not in the backing chain of the image", {
      reason: "BAD_BASE",
    });
  }
  return count;
}

/**
 * Status of the run at `offset` through the backing chain (QEMU bdrv_co_common_block_status_above as
 * qemu-img map uses it). Layers are asked top-down until one reports `allocated`; that layer's depth is
 * reported with present=true. A run no layer allocates is reported at the depth where the walk
 * stopped, with present=false:
 * - bottom of the chain reached: zero=true (nothing underneath, so it reads as zeros);
 * - the next layer is `base`: zero=false, data=false (unknown here: the content lies in the base);
 * - the next layer is shorter than the offset: zero=true (reads past a short backing return zeros).
 * The returned length is clamped to the query and to the virtual size of every layer walked.
 */
export async function blockStatusAbove(
  top: BlockImage,
  base: BlockImage | undefined,
  offset: number,
  length: number,
  opts?: IoOptions,
): Promise<ChainStatus> {
  assertInImage(top, offset, length);
  if (length === 0) throw new EngineError("INVALID_ARGUMENT", "block status needs a non-empty range");
  layersAbove(top, base);
  return walkChain(top, base, offset, length, opts);
}

/** blockStatusAbove without the argument checks, for callers that validated once for many queries. */
export async function walkChain(
  top: BlockImage,
  base: BlockImage | undefined,
  offset: number,
  length: number,
  opts?: IoOptions,
): Promise<ChainStatus> {
  let layer = top;
  let remaining = Math.min(length, top.virtualSize - offset);
  for (let depth = 0; ; depth++) {
    throwIfAborted(opts?.signal);
    const answer = await layer.blockStatus(
      offset,
      remaining,
      opts?.signal === undefined ? {} : { signal: opts.signal },
    );
    if (!Number.isSafeInteger(answer.length) || answer.length <= 0) {
      throw new EngineError(
        "INTERNAL",
        `${layer.format} block status at ${offset} returned length ${answer.length}`,
      );
    }
    remaining = Math.min(remaining, answer.length);
    if (answer.allocated) {
      return { status: { ...answer, length: remaining }, depth, present: true };
    }
    const next = layer.backing;
    if (next === undefined || next.virtualSize <= offset) {
      return { status: unallocated(remaining, true), depth, present: false };
    }
    if (next === base) {
      return { status: unallocated(remaining, false), depth, present: false };
    }
    remaining = Math.min(remaining, next.virtualSize - offset);
    layer = next;
  }
}

function unallocated(length: number, zero: boolean): LayerStatus {
  return { length, allocated: false, data: false, zero };
}
