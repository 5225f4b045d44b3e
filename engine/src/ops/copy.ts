import type { BlockImage } from "../block-image.js";
import { blockStatusAbove } from "../core/block-status-above.js";
import { readAt, writeAt } from "../core/io.js";
import { findZeroRuns } from "../core/zero-buffer.js";
import { EngineError } from "../errors.js";
import { allocAlignedBuffer } from "../host/libc.js";
import type { ProgressFn } from "../types.js";
import { type PipelineStep, runOrderedPipeline } from "./ordered-pipeline.js";

export interface CopyOptions {
  signal?: AbortSignal;
  onProgress?: ProgressFn;
  /**
   * Granularity of zero detection in copied data (default 64 KiB, at least the target's zero alignment:
   * a smaller hole could not stay a hole there anyway). Runs of zeros are not written.
   */
  zeroGranularity?: number;
  /** Chunks read or written at once (default 8, as qemu-img convert's coroutines). */
  maxInFlight?: number;
}

export interface CopyResult {
  /** Guest bytes written to the target. */
  writtenBytes: number;
  /** Guest bytes skipped because they read as zeros (holes, zero clusters, or detected zeros). */
  skippedBytes: number;
}

/**
 * Largest piece read and written at once (qemu-img convert's buffer size). Chunks are aligned to it in
 * guest offsets, so a target cluster is never split between two chunks unless the source run is.
 */
const CHUNK = 2 << 20;
const DEFAULT_IN_FLIGHT = 8;
const BUFFER_ALIGN = 4096;

/**
 * Chunk buffers are reused: fresh 2 MiB buffers for every chunk cost a page fault per 4 KiB and GC work.
 * They are page-aligned in memory, so a target written with O_DIRECT (directWrites) takes them as they are.
 */
class BufferPool {
  private readonly free: Buffer[] = [];
  take(length: number): Buffer {
    return (this.free.pop() ?? allocAlignedBuffer(CHUNK, BUFFER_ALIGN)).subarray(0, length);
  }
  give(buffer: Buffer): void {
    this.free.push(Buffer.from(buffer.buffer, buffer.byteOffset, CHUNK));
  }
}

interface ReadChunk {
  offset: number;
  bytes: Buffer;
  /** Non-zero runs of `bytes` (offsets within it) that must reach the target. */
  dataRuns: Array<{ start: number; length: number }>;
}

/**
 * Copies guest content from `src` (through its whole backing chain) into `dst`, a freshly created image
 * that reads as zeros everywhere and has no backing. Sparse-aware: runs the chain reports as zero are
 * skipped without being read, and all-zero blocks inside data runs are not written — so the target's
 * map has no data where the source had none. This is CloneVolume FULL and format conversion.
 *
 * Pipelined like qemu-img convert: several chunks are read at once while earlier ones are written, and
 * writes are issued in guest order (a qcow2 target lays its clusters out sequentially). Progress
 * reports the fully copied prefix, so it is monotonic even though chunks finish out of order.
 */
export async function copyImage(
  src: BlockImage,
  dst: BlockImage,
  opts: CopyOptions = {},
): Promise<CopyResult> {
  const { signal } = opts;
  if (dst.virtualSize < src.virtualSize) {
    throw new EngineError("INVALID_ARGUMENT", "target is smaller than the source", {
      reason: "TARGET_TOO_SMALL",
    });
  }
  const granularity = Math.max(opts.zeroGranularity ?? 64 * 1024, dst.limits.zeroAlignment);
  const total = src.virtualSize;
  const pool = new BufferPool();
  let writtenBytes = 0;

  const readChunk = async (offset: number, length: number): Promise<ReadChunk> => {
    const bytes = pool.take(length);
    try {
      await readAt(src, offset, bytes, { signal });
    } catch (error) {
      pool.give(bytes);
      throw error;
    }
    const dataRuns = findZeroRuns(offset, bytes, granularity).filter((run) => !run.zero);
    return { offset, bytes, dataRuns };
  };
  const writeChunk = async (chunk: ReadChunk): Promise<void> => {
    try {
      const writes = chunk.dataRuns.map((run) =>
        writeAt(dst, chunk.offset + run.start, chunk.bytes.subarray(run.start, run.start + run.length), {
          signal,
        }),
      );
      await Promise.all(writes);
      for (const run of chunk.dataRuns) writtenBytes += run.length;
    } finally {
      pool.give(chunk.bytes);
    }
  };

  async function* steps(): AsyncGenerator<PipelineStep<ReadChunk>> {
    let pos = 0;
    while (pos < total) {
      const { status } = await blockStatusAbove(src, undefined, pos, total - pos, { signal });
      const runEnd = Math.min(total, pos + status.length);
      if (!status.data) {
        // Zero or unallocated everywhere in the chain: the new target already reads zeros here.
        yield { start: pos, end: runEnd };
      } else {
        for (let p = pos; p < runEnd; ) {
          const start = p;
          const end = Math.min(runEnd, (Math.floor(start / CHUNK) + 1) * CHUNK);
          yield { start, end, prepare: () => readChunk(start, end - start), commit: writeChunk };
          p = end;
        }
      }
      pos = runEnd;
    }
  }

  opts.onProgress?.(0, total, "copying");
  await runOrderedPipeline(steps(), {
    maxInFlight: opts.maxInFlight ?? DEFAULT_IN_FLIGHT,
    signal,
    onDone: (done) => opts.onProgress?.(done, total, "copying"),
  });
  await dst.flush({ signal });
  return { writtenBytes, skippedBytes: total - writtenBytes };
}
