import type { BlockImage } from "../block-image.js";
import { mapExtents } from "../core/allocation-map.js";
import { readAt } from "../core/io.js";
import { throwIfAborted } from "../errors.js";
import { createStreamOptimizedWriter } from "../formats/vmdk/stream-writer.js";
import type { ExportOptions, ExportPiece } from "./pieces.js";

export interface VmdkExportOptions extends Omit<ExportOptions, "chunkSize"> {
  /** Grain size (default 64 KiB). */
  grainSize?: number;
  /** Extent name recorded in the embedded descriptor (the download's file name; no path). */
  fileName?: string;
  compressionLevel?: number;
}

/**
 * The image as a streamOptimized VMDK, produced by the vmdk driver's single-pass writer: grains the
 * allocation map reports as not holding data are never read; each writer output (grain, grain table,
 * directory, footer, EOS marker) becomes one piece as soon as it is produced. The file length is not
 * known in advance (compressed sizes), so there are no zero pieces.
 */
export async function* exportVmdk(
  image: BlockImage,
  opts: VmdkExportOptions = {},
): AsyncGenerator<ExportPiece> {
  const { signal } = opts;
  const pending: Uint8Array[] = [];
  const writer = createStreamOptimizedWriter({
    size: image.virtualSize,
    ...(opts.grainSize === undefined ? {} : { grainSize: opts.grainSize }),
    ...(opts.fileName === undefined ? {} : { fileName: opts.fileName }),
    ...(opts.compressionLevel === undefined ? {} : { compressionLevel: opts.compressionLevel }),
    write: async (bytes) => void pending.push(bytes),
  });
  let offset = 0;
  function* drain(): Generator<ExportPiece> {
    for (const data of pending.splice(0)) {
      yield { offset, data };
      offset += data.length;
    }
  }
  const grainSize = writer.grainSize;
  let lastGrain = -1;
  const total = image.virtualSize;
  opts.onProgress?.(0, total, "exporting");
  for await (const extent of mapExtents(image, signal === undefined ? {} : { signal })) {
    if (!extent.data) continue;
    const end = extent.start + extent.length;
    let index = Math.floor(extent.start / grainSize);
    // A grain straddling two data extents was already written with the first.
    for (; index * grainSize < end; index++) {
      if (index <= lastGrain) continue;
      throwIfAborted(signal);
      const start = index * grainSize;
      const data = await readAt(
        image,
        start,
        Math.min(grainSize, total - start),
        signal === undefined ? {} : { signal },
      );
      await writer.writeGrain(index, data);
      lastGrain = index;
      yield* drain();
      opts.onProgress?.(Math.min(total, start + grainSize), total, "exporting");
    }
  }
  await writer.finish();
  yield* drain();
  opts.onProgress?.(total, total, "exporting");
}
