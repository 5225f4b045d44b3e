import type { BlockImage } from "../block-image.js";
import { blockStatusAbove } from "../core/block-status-above.js";
import { readAt, writeAt } from "../core/io.js";
import { EngineError, throwIfAborted } from "../errors.js";
import type { ProgressFn } from "../types.js";
import { findZeroRuns } from "../core/zero-buffer.js";

export interface CopyOptions {
  signal?: AbortSignal;
  onProgress?: ProgressFn;
  /** Granularity of zero detection in copied data (default 64 KiB). Runs of zeros are not written. */
  zeroGranularity?: number;
}

export interface CopyResult {
  /** Guest bytes written to the target. */
  writtenBytes: number;
  /** Guest bytes skipped because they read as zeros (holes, zero clusters, or detected zeros). */
  skippedBytes: number;
}

/** Largest piece read and written at once. */
const CHUNK = 4 << 20;

/**
 * Copies guest content from `src` (through its whole backing chain) into `dst`, a freshly created image
 * that reads as zeros everywhere and has no backing. Sparse-aware: runs the chain reports as zero are
 * skipped without being read, and all-zero blocks inside data runs are not written — so the target's
 * map has no data where the source had none. This is CloneVolume FULL and format conversion.
 */
export async function copyImage(src: BlockImage, dst: BlockImage, opts: CopyOptions = {}): Promise<CopyResult> {
  const { signal } = opts;
  if (dst.virtualSize < src.virtualSize) {
    throw new EngineError("INVALID_ARGUMENT", "target is smaller than the source", { reason: "TARGET_TOO_SMALL" });
  }
  const granularity = opts.zeroGranularity ?? 64 * 1024;
  const total = src.virtualSize;
  const result: CopyResult = { writtenBytes: 0, skippedBytes: 0 };
  let pos = 0;
  opts.onProgress?.(0, total, "copying");
  while (pos < total) {
    throwIfAborted(signal);
    const { status } = await blockStatusAbove(src, undefined, pos, total - pos, { signal });
    const runEnd = Math.min(total, pos + status.length);
    if (!status.data) {
      // Zero or unallocated everywhere in the chain: the new target already reads zeros here.
      result.skippedBytes += runEnd - pos;
    } else {
      for (let p = pos; p < runEnd; p += CHUNK) {
        throwIfAborted(signal);
        const n = Math.min(CHUNK, runEnd - p);
        const bytes = await readAt(src, p, n, { signal });
        for (const run of findZeroRuns(p, bytes, granularity)) {
          if (run.zero) continue;
          await writeAt(dst, p + run.start, bytes.subarray(run.start, run.start + run.length), { signal });
          result.writtenBytes += run.length;
        }
        opts.onProgress?.(p + n, total, "copying");
      }
    }
    pos = runEnd;
    opts.onProgress?.(pos, total, "copying");
  }
  result.skippedBytes = total - result.writtenBytes;
  await dst.flush({ signal });
  return result;
}
