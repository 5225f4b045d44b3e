import type { BlockImage } from "../block-image.js";
import { mapExtents } from "../core/allocation-map.js";
import { readAt } from "../core/io.js";
import { EngineError, throwIfAborted } from "../errors.js";
import { DEFAULT_CHUNK_SIZE, type ExportOptions, type ExportPiece } from "./pieces.js";

export function checkChunkSize(chunkSize: number, multipleOf = 1): void {
  if (
    !Number.isSafeInteger(chunkSize) ||
    chunkSize <= 0 ||
    chunkSize % multipleOf !== 0 ||
    chunkSize > 256 << 20
  ) {
    throw new EngineError("INVALID_ARGUMENT", `invalid chunk size ${chunkSize}`, {
      reason: "EXPORT_BAD_CHUNK_SIZE",
    });
  }
}

/**
 * The guest content of `image` (its whole backing chain) as a raw disk file: data runs as bytes, runs
 * the allocation map reports as not holding data as zero pieces (never read, never sent; a receiver
 * writes them as holes). Adjacent zero runs are merged; the last piece always ends at the virtual size.
 */
export async function* exportRaw(image: BlockImage, opts: ExportOptions = {}): AsyncGenerator<ExportPiece> {
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  checkChunkSize(chunkSize);
  const { signal } = opts;
  const total = image.virtualSize;
  let zeroStart = -1;
  let done = 0;
  opts.onProgress?.(0, total, "exporting");
  for await (const extent of mapExtents(image, signal === undefined ? {} : { signal })) {
    if (!extent.data) {
      if (zeroStart < 0) zeroStart = extent.start;
      continue;
    }
    if (zeroStart >= 0) {
      yield { offset: zeroStart, length: extent.start - zeroStart, zero: true };
      zeroStart = -1;
    }
    const end = extent.start + extent.length;
    for (let pos = extent.start; pos < end; pos += chunkSize) {
      throwIfAborted(signal);
      const data = await readAt(
        image,
        pos,
        Math.min(chunkSize, end - pos),
        signal === undefined ? {} : { signal },
      );
      yield { offset: pos, data };
      done = pos + data.length;
      opts.onProgress?.(done, total, "exporting");
    }
  }
  if (zeroStart >= 0) yield { offset: zeroStart, length: total - zeroStart, zero: true };
  opts.onProgress?.(total, total, "exporting");
}
