import { writeU64 } from "../binary/big-endian.js";
import type { BlockImage } from "../block-image.js";
import { readAt } from "../core/io.js";
import { EngineError, throwIfAborted } from "../errors.js";
import { encodeL1Entry, encodeStandardEntry } from "../formats/qcow2/l2-entry.js";
import { setRefcountEntry } from "../formats/qcow2/refcount-entry.js";
import type { HostFile } from "../host/host-file.js";
import { type ClusterRun, clusterRuns, usedL2Tables } from "./cluster-runs.js";
import { DEFAULT_CHUNK_SIZE, type ExportOptions, type ExportPiece } from "./pieces.js";
import { exportQcow2Compressed } from "./qcow2-compressed.js";
import { headerCluster, refcountGeometry, streamLayout } from "./qcow2-image-layout.js";
import { checkChunkSize } from "./raw-export.js";

export interface Qcow2ExportOptions extends ExportOptions {
  /** Deflate every data cluster (qemu-img convert -c). Needs `staging`. */
  compress?: boolean;
  /** An empty writable file the compressed image is assembled in before it is streamed (see below). */
  staging?: HostFile;
  /** "1.1" (v3, default) or "0.10" (v2: zero runs stay unallocated, which reads the same without backing). */
  compat?: "0.10" | "1.1";
  /** Default 64 KiB. */
  clusterSize?: number;
}

/**
 * The image as a qcow2 file.
 *
 * Uncompressed: one pass, no staging. The whole layout follows from the allocation map before any
 * guest byte is read — header cluster, L1, refcount table and blocks, the L2 tables in L1 order, then
 * the data clusters in guest order — because every data cluster occupies exactly one host cluster, so
 * the host offset of the n-th data cluster is known up front. Zero clusters of the source are recorded
 * with the zero flag (v3). Every cluster has refcount 1; the result passes `qemu-img check` clean.
 *
 * Compressed: where each compressed cluster lands depends on the compressed sizes of all clusters
 * before it, so the positions of the L2 tables, the L1 and the refcount structures are only known at
 * the end — yet the header at offset 0 must name them. The image is therefore assembled in the
 * caller's `staging` file first and then streamed from it (qcow2-compressed.ts).
 */
export async function* exportQcow2(
  image: BlockImage,
  opts: Qcow2ExportOptions = {},
): AsyncGenerator<ExportPiece> {
  if (opts.compress) {
    if (opts.staging === undefined) {
      throw new EngineError("INVALID_ARGUMENT", "a compressed qcow2 export needs a staging file", {
        reason: "EXPORT_STAGING_REQUIRED",
      });
    }
    yield* exportQcow2Compressed(image, opts.staging, opts);
    return;
  }
  const geometry = streamLayout(image, opts);
  const { layout, version, l1Size, l1Clusters } = geometry;
  const cs = layout.clusterSize;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  checkChunkSize(chunkSize);
  const chunkClusters = Math.max(1, Math.floor(chunkSize / cs));
  const { signal } = opts;
  const total = image.virtualSize;
  opts.onProgress?.(0, total, "mapping");

  const runs = await clusterRuns(image, cs, version === 3, signal);
  const tables = usedL2Tables(runs, layout.l2Entries);
  const dataClusters = runs.reduce((n, r) => (r.kind === "data" ? n + r.count : n), 0);
  const before = 1 + l1Clusters;
  const { tableClusters, blocks } = refcountGeometry(layout, before + tables.length + dataClusters);
  const l1Offset = cs;
  const reftableOffset = before * cs;
  const refblockOffset = reftableOffset + tableClusters * cs;
  const l2Offset = refblockOffset + blocks * cs;
  const dataOffset = l2Offset + tables.length * cs;
  const fileClusters = dataOffset / cs + dataClusters;

  let position = 0;
  const emit = (data: Uint8Array): ExportPiece => {
    const piece = { offset: position, data };
    position += data.length;
    return piece;
  };

  yield emit(
    headerCluster({
      version,
      layout,
      size: total,
      l1Size,
      l1TableOffset: l1Offset,
      refcountTableOffset: reftableOffset,
      refcountTableClusters: tableClusters,
    }),
  );
  const l1 = Buffer.alloc(l1Clusters * cs);
  tables.forEach((l1Index, i) => {
    const { hi, lo } = encodeL1Entry(l2Offset + i * cs, true);
    l1.writeUInt32BE(hi, l1Index * 8);
    l1.writeUInt32BE(lo, l1Index * 8 + 4);
  });
  yield emit(l1);
  const reftable = Buffer.alloc(tableClusters * cs);
  for (let i = 0; i < blocks; i++) writeU64(reftable, i * 8, refblockOffset + i * cs);
  yield emit(reftable);
  for (let b = 0; b < blocks; b++) {
    const block = new Uint8Array(cs);
    const first = b * layout.refcountsPerBlock;
    const count = Math.min(layout.refcountsPerBlock, fileClusters - first);
    for (let i = 0; i < count; i++) setRefcountEntry(block, i, layout.refcountBits, 1);
    yield emit(block);
  }

  // L2 tables in L1 order; the n-th data cluster in guest order lives at dataOffset + n * cs.
  let runIndex = 0;
  let dataRank = 0;
  for (const l1Index of tables) {
    throwIfAborted(signal);
    const table = Buffer.alloc(cs);
    const from = l1Index * layout.l2Entries;
    const to = from + layout.l2Entries;
    while (runIndex < runs.length) {
      const run = runs[runIndex] as ClusterRun;
      const start = Math.max(run.first, from);
      const end = Math.min(run.first + run.count, to);
      for (let c = start; c < end; c++) {
        const entry =
          run.kind === "data"
            ? encodeStandardEntry(dataOffset + dataRank++ * cs, false, true)
            : encodeStandardEntry(0, true, false);
        table.writeUInt32BE(entry.hi, (c - from) * 8);
        table.writeUInt32BE(entry.lo, (c - from) * 8 + 4);
      }
      if (run.first + run.count > to) break; // continues in the next table
      runIndex++;
    }
    yield emit(table);
  }

  opts.onProgress?.(0, total, "exporting");
  for (const run of runs) {
    if (run.kind !== "data") continue;
    for (let c = run.first; c < run.first + run.count; c += chunkClusters) {
      throwIfAborted(signal);
      const n = Math.min(chunkClusters, run.first + run.count - c);
      const start = c * cs;
      const buffer = Buffer.alloc(n * cs); // the tail past the virtual size stays zero
      await readAt(
        image,
        start,
        buffer.subarray(0, Math.min(n * cs, total - start)),
        signal === undefined ? {} : { signal },
      );
      yield emit(buffer);
      opts.onProgress?.(Math.min(total, start + n * cs), total, "exporting");
    }
  }
  if (position !== fileClusters * cs) {
    throw new EngineError(
      "INTERNAL",
      `qcow2 export produced ${position} bytes, layout said ${fileClusters * cs}`,
    );
  }
  opts.onProgress?.(total, total, "exporting");
}
