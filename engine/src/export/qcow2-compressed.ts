import { promisify } from "node:util";
import { deflateRaw } from "node:zlib";
import { writeU64 } from "../binary/big-endian.js";
import type { BlockImage } from "../block-image.js";
import { readAt } from "../core/io.js";
import { isAllZero } from "../core/zero-buffer.js";
import { EngineError, throwIfAborted } from "../errors.js";
import { encodeCompressedEntry, encodeL1Entry, encodeStandardEntry } from "../formats/qcow2/l2-entry.js";
import { setRefcountEntry } from "../formats/qcow2/refcount-entry.js";
import type { HostFile } from "../host/host-file.js";
import { clusterRuns, usedL2Tables } from "./cluster-runs.js";
import { DEFAULT_CHUNK_SIZE, type ExportPiece } from "./pieces.js";
import type { Qcow2ExportOptions } from "./qcow2-export.js";
import { headerCluster, refcountGeometry, streamLayout } from "./qcow2-image-layout.js";
import { checkChunkSize } from "./raw-export.js";

const deflateRawAsync = promisify(deflateRaw);

/** Appends to the staging file strictly in order, in large writes. */
class SequentialWriter {
  private buffered: Uint8Array[] = [];
  private bufferedBytes = 0;
  private flushedTo = 0;
  constructor(
    private readonly file: HostFile,
    start: number,
  ) {
    this.flushedTo = start;
  }
  get position(): number {
    return this.flushedTo + this.bufferedBytes;
  }
  async append(bytes: Uint8Array): Promise<void> {
    this.buffered.push(bytes);
    this.bufferedBytes += bytes.length;
    if (this.bufferedBytes >= 4 << 20) await this.flush();
  }
  async padTo(alignment: number): Promise<void> {
    const gap = (alignment - (this.position % alignment)) % alignment;
    if (gap > 0) await this.append(new Uint8Array(gap));
  }
  async flush(): Promise<void> {
    if (this.bufferedBytes === 0) return;
    await this.file.writev(this.flushedTo, this.buffered);
    this.flushedTo += this.bufferedBytes;
    this.buffered = [];
    this.bufferedBytes = 0;
  }
}

/** Per-host-cluster reference counts, grown as the file grows (2 bytes per host cluster). */
class RefcountCounter {
  counts = new Uint16Array(1024);
  add(cluster: number): void {
    if (cluster >= this.counts.length) {
      const grown = new Uint16Array(Math.max(cluster + 1, this.counts.length * 2));
      grown.set(this.counts);
      this.counts = grown;
    }
    this.counts[cluster] = (this.counts[cluster] ?? 0) + 1;
  }
}

/**
 * Compressed qcow2 export. The qcow2 driver has no compressed-write path, so the image is built here,
 * in one sequential pass over `staging`, as `qemu-img convert -c` lays it out in spirit:
 * - cluster 0 is reserved for the header (written last, when the table positions are known);
 * - data clusters in guest order, each deflated (raw deflate, 4 KiB window, as QEMU's
 *   qcow2_compress) and packed byte-tight after the previous one — a compressed cluster may span two
 *   host clusters, each of which then counts one reference per compressed cluster touching it;
 *   a cluster that does not shrink is stored uncompressed in its own aligned host cluster, and an
 *   all-zero cluster is not stored at all;
 * - each L2 table is written (cluster-aligned) as soon as its range of guest clusters is done, so only
 *   one table is in memory;
 * - then the L1, the refcount table and the refcount blocks, sized by the usual fixpoint.
 * The finished file is then streamed from `staging` in chunkSize pieces (holes as zero pieces).
 * Memory: one L2 table, the L1 (≤ 32 MiB by qcow2 limits) and 2 bytes per host cluster of output.
 */
export async function* exportQcow2Compressed(
  image: BlockImage,
  staging: HostFile,
  opts: Qcow2ExportOptions,
): AsyncGenerator<ExportPiece> {
  const { layout, version, l1Size, l1Clusters } = streamLayout(image, opts);
  const cs = layout.clusterSize;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  checkChunkSize(chunkSize);
  const { signal } = opts;
  const io = signal === undefined ? {} : { signal };
  const total = image.virtualSize;
  if ((await staging.size()) !== 0 || staging.readOnly) {
    throw new EngineError("INVALID_ARGUMENT", "the staging file must be empty and writable", {
      reason: "EXPORT_BAD_STAGING",
    });
  }
  opts.onProgress?.(0, total, "mapping");
  const runs = await clusterRuns(image, cs, version === 3, signal);
  const tables = usedL2Tables(runs, layout.l2Entries);

  const out = new SequentialWriter(staging, cs);
  const refs = new RefcountCounter();
  refs.add(0);
  const l1 = Buffer.alloc(l1Clusters * cs);
  const maxExtraSectors = 2 ** (layout.clusterBits - 8) - 1;
  let runIndex = 0;
  opts.onProgress?.(0, total, "compressing");
  for (const l1Index of tables) {
    const table = Buffer.alloc(cs);
    const from = l1Index * layout.l2Entries;
    const to = from + layout.l2Entries;
    const setEntry = (cluster: number, entry: { hi: number; lo: number }) => {
      table.writeUInt32BE(entry.hi, (cluster - from) * 8);
      table.writeUInt32BE(entry.lo, (cluster - from) * 8 + 4);
    };
    while (runIndex < runs.length) {
      const run = runs[runIndex]!;
      const start = Math.max(run.first, from);
      const end = Math.min(run.first + run.count, to);
      for (let c = start; c < end; c++) {
        if (run.kind === "zero") {
          setEntry(c, encodeStandardEntry(0, true, false));
          continue;
        }
        throwIfAborted(signal);
        const guest = Buffer.alloc(cs);
        await readAt(image, c * cs, guest.subarray(0, Math.min(cs, total - c * cs)), io);
        if (isAllZero(guest)) continue;
        const packed = await deflateRawAsync(guest, { windowBits: 12, memLevel: 9 });
        const offset = out.position;
        const extraSectors = Math.floor((offset + packed.length - 1) / 512) - Math.floor(offset / 512);
        if (packed.length < cs - 512 && extraSectors <= maxExtraSectors) {
          setEntry(c, encodeCompressedEntry(layout.clusterBits, offset, extraSectors));
          for (let h = Math.floor(offset / cs); h <= Math.floor((offset + packed.length - 1) / cs); h++)
            refs.add(h);
          await out.append(packed);
        } else {
          await out.padTo(cs);
          const host = out.position;
          setEntry(c, encodeStandardEntry(host, false, true));
          refs.add(host / cs);
          await out.append(guest);
        }
        opts.onProgress?.(Math.min(total, (c + 1) * cs), total, "compressing");
      }
      if (run.first + run.count > to) break;
      runIndex++;
    }
    await out.padTo(cs);
    const l2At = out.position;
    refs.add(l2At / cs);
    await out.append(table);
    const { hi, lo } = encodeL1Entry(l2At, true);
    l1.writeUInt32BE(hi, l1Index * 8);
    l1.writeUInt32BE(lo, l1Index * 8 + 4);
  }
  await out.padTo(cs);
  const l1At = out.position;
  for (let i = 0; i < l1Clusters; i++) refs.add(l1At / cs + i);
  await out.append(l1);
  const before = out.position / cs;
  const { tableClusters, blocks } = refcountGeometry(layout, before);
  const reftableAt = before * cs;
  const refblocksAt = reftableAt + tableClusters * cs;
  const fileClusters = before + tableClusters + blocks;
  for (let i = 0; i < tableClusters + blocks; i++) refs.add(before + i);
  const reftable = Buffer.alloc(tableClusters * cs);
  for (let i = 0; i < blocks; i++) writeU64(reftable, i * 8, refblocksAt + i * cs);
  await out.append(reftable);
  for (let b = 0; b < blocks; b++) {
    const block = new Uint8Array(cs);
    const first = b * layout.refcountsPerBlock;
    for (let i = 0; i < layout.refcountsPerBlock && first + i < fileClusters; i++) {
      const count = refs.counts[first + i] ?? 0;
      if (count > 0) setRefcountEntry(block, i, layout.refcountBits, count);
    }
    await out.append(block);
  }
  await out.flush();
  await staging.write(
    0,
    headerCluster({
      version,
      layout,
      size: total,
      l1Size,
      l1TableOffset: l1At,
      refcountTableOffset: reftableAt,
      refcountTableClusters: tableClusters,
    }),
  );
  await staging.flush();

  const fileSize = fileClusters * cs;
  opts.onProgress?.(0, fileSize, "streaming");
  for (let pos = 0; pos < fileSize; ) {
    throwIfAborted(signal);
    const data = await staging.seekData(pos);
    if (data === null || data > pos) {
      const holeEnd = Math.min(fileSize, data ?? fileSize);
      yield { offset: pos, length: holeEnd - pos, zero: true };
      pos = holeEnd;
      continue;
    }
    const end = Math.min(fileSize, await staging.seekHole(pos), pos + chunkSize);
    const bytes = new Uint8Array(end - pos);
    await staging.readFull(pos, bytes, io);
    yield { offset: pos, data: bytes };
    pos = end;
    opts.onProgress?.(pos, fileSize, "streaming");
  }
}
