import type { BlockImage } from "../block-image.js";
import { EngineError, throwIfAborted } from "../errors.js";
import type { Extent } from "../types.js";
import { layersAbove, walkChain } from "./block-status-above.js";
import { ExtentBuilder } from "./extent-builder.js";
import { assertInImage } from "./range.js";

export interface MapOptions {
  /** First byte to map (default 0). */
  start?: number;
  /** Bytes to map (default: to the end of the image). */
  length?: number;
  /** Report only what lies above this backing layer (what a flatten onto it must copy). */
  base?: BlockImage;
  signal?: AbortSignal;
}

/**
 * The allocation map of `top` with qemu-img map --output=json semantics: ascending, contiguous,
 * merged extents covering exactly the requested range. Streams: extents are yielded as soon as they
 * are final.
 */
export async function* mapExtents(top: BlockImage, opts: MapOptions = {}): AsyncGenerator<Extent> {
  const start = opts.start ?? 0;
  const length = opts.length ?? Math.max(0, top.virtualSize - start);
  assertInImage(top, start, length);
  layersAbove(top, opts.base);
  const end = start + length;
  const builder = new ExtentBuilder(start, end);
  const signal = opts.signal;
  while (!builder.complete) {
    throwIfAborted(signal);
    const offset = builder.position;
    const { status, depth, present } = await walkChain(
      top,
      opts.base,
      offset,
      end - offset,
      signal === undefined ? {} : { signal },
    );
    const extent: Extent = {
      start: offset,
      length: status.length,
      depth,
      present,
      zero: status.zero,
      data: status.data,
      compressed: status.compressed === true,
    };
    if (status.hostOffset !== undefined) extent.offset = status.hostOffset;
    builder.add(extent);
    yield* builder.drain();
  }
  yield* builder.finish();
}

export interface AllocationSummary {
  /** Bytes some layer above base stores as data (includes data that happens to be zeros). */
  dataBytes: number;
  /** Bytes some layer above base records as reading zero without storing data (holes, zero clusters). */
  zeroBytes: number;
  /** Bytes no layer above base determines (present=false). */
  unallocatedBytes: number;
  /** Bytes the top layer itself determines, data or zeros (what GetVolume calls allocation). */
  allocatedInTopBytes: number;
}

/** Totals over mapExtents; dataBytes + zeroBytes + unallocatedBytes equals the mapped length. */
export async function allocationSummary(top: BlockImage, opts: MapOptions = {}): Promise<AllocationSummary> {
  const summary: AllocationSummary = {
    dataBytes: 0,
    zeroBytes: 0,
    unallocatedBytes: 0,
    allocatedInTopBytes: 0,
  };
  for await (const extent of mapExtents(top, opts)) addToSummary(summary, extent);
  return summary;
}

/** Adds one extent to a running summary (exported for streams that send extents and a summary together). */
export function addToSummary(summary: AllocationSummary, extent: Extent): void {
  if (!extent.present) summary.unallocatedBytes += extent.length;
  // Present but neither data nor zero does not occur with our drivers; count it as stored data, the safe side.
  else if (extent.zero && !extent.data) summary.zeroBytes += extent.length;
  else summary.dataBytes += extent.length;
  if (extent.present && extent.depth === 0) summary.allocatedInTopBytes += extent.length;
  if (!Number.isSafeInteger(summary.dataBytes + summary.zeroBytes + summary.unallocatedBytes)) {
    throw new EngineError("INTERNAL", "allocation summary overflowed");
  }
}
