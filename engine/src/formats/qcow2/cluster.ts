import { EngineError } from "../../errors.js";
import { corrupt } from "./errors.js";
import {
  type ClassifiedEntry,
  type ClusterType,
  type CompressedExtent,
  classifyL2Entry,
  encodeStandardEntry,
  entryOffset,
} from "./l2-entry.js";
import { l1IndexOf, l2IndexOf } from "./layout.js";
import type { Qcow2Metadata } from "./metadata.js";

/** The answer of the one lookup shared by read, write planning and blockStatus. */
export interface HostMapping {
  type: ClusterType;
  /** Bytes from the queried offset with the same type and (for host-backed types) contiguous host offsets. */
  bytes: number;
  /** Host offset of the queried byte for normal / zero-alloc / unallocated-alloc runs, else 0. */
  hostOffset: number;
  compressed?: CompressedExtent;
}

export const FULL_MASK = 0xffff_ffff;

/** Reads entry `index` of an L2 table (and its subcluster bitmap with extended L2). */
export function readL2Raw(
  md: Qcow2Metadata,
  table: Buffer,
  index: number,
): { hi: number; lo: number; alloc: number; zero: number } {
  const at = index * md.layout.l2EntryBytes;
  const hi = table.readUInt32BE(at);
  const lo = table.readUInt32BE(at + 4);
  if (md.layout.l2EntryBytes === 16)
    return { hi, lo, zero: table.readUInt32BE(at + 8), alloc: table.readUInt32BE(at + 12) };
  return { hi, lo, alloc: 0, zero: 0 };
}

export function writeL2Raw(
  md: Qcow2Metadata,
  table: Buffer,
  index: number,
  hi: number,
  lo: number,
  alloc = 0,
  zero = 0,
): void {
  const bytes = md.layout.l2EntryBytes;
  const at = entryAt(table, index, bytes);
  // Byte stores after one range check: Buffer.writeUInt32BE validates every call, and preallocating
  // gigabytes writes tens of thousands of entries in a row.
  putUint32(table, at, hi);
  putUint32(table, at + 4, lo);
  if (bytes === 16) {
    putUint32(table, at + 8, zero);
    putUint32(table, at + 12, alloc);
  }
}

/** Byte offset of entry `index`; a RangeError (a bug, never a file's doing) when it is not in the table. */
function entryAt(table: Buffer, index: number, bytes: number): number {
  const at = index * bytes;
  if (!Number.isInteger(index) || index < 0 || at + bytes > table.length)
    throw new RangeError(`L2 entry ${index} is outside the table`);
  return at;
}

function putUint32(into: Buffer, at: number, value: number): void {
  into[at] = value >>> 24;
  into[at + 1] = (value >>> 16) & 0xff;
  into[at + 2] = (value >>> 8) & 0xff;
  into[at + 3] = value & 0xff;
}

/** An all-zero entry (and bitmap): unallocated, valid in every format variant; fresh tables hold only these. */
function isEmptyEntry(md: Qcow2Metadata, table: Buffer, index: number): boolean {
  const bytes = md.layout.l2EntryBytes;
  const at = entryAt(table, index, bytes);
  for (let k = 0; k < bytes; k++) if (table[at + k] !== 0) return false;
  return true;
}

/** Classifies a subcluster and validates where its host cluster lies. */
function classifyAt(md: Qcow2Metadata, table: Buffer, index: number, subcluster: number): ClassifiedEntry {
  const raw = readL2Raw(md, table, index);
  const e = classifyL2Entry(md.ctx, raw.hi, raw.lo, raw.alloc, raw.zero, subcluster);
  if (e.hostOffset !== 0 && e.hostOffset + md.clusterSize > md.refcounts.allocEnd) {
    throw corrupt("QCOW2_CLUSTER_OUT_OF_RANGE", `data cluster at ${e.hostOffset} lies outside the image`);
  }
  if (e.hostOffset !== 0 && e.hostOffset < md.clusterSize) {
    throw corrupt("QCOW2_CLUSTER_OVERLAPS_METADATA", "data cluster overlaps the image header");
  }
  if (e.compressed) {
    const end = e.compressed.offset + e.compressed.length;
    if (e.compressed.offset < md.clusterSize || end > md.refcounts.allocEnd + md.clusterSize) {
      throw corrupt(
        "QCOW2_COMPRESSED_OUT_OF_RANGE",
        "compressed cluster descriptor points outside the image",
      );
    }
  }
  return e;
}

/** Classifies the whole cluster at `index` for write planning (subcluster 0 plus the raw bitmap). */
export function classifyCluster(
  md: Qcow2Metadata,
  table: Buffer,
  index: number,
): { e: ClassifiedEntry; alloc: number; zero: number } {
  const raw = readL2Raw(md, table, index);
  const e = classifyAt(md, table, index, 0);
  if (md.ctx.extendedL2 && e.type !== "compressed") {
    // Validate every subcluster's bitmap state once (corrupt combinations throw).
    for (let sc = 1; sc < 32; sc++) classifyL2Entry(md.ctx, raw.hi, raw.lo, raw.alloc, raw.zero, sc);
  }
  return { e, alloc: raw.alloc, zero: raw.zero };
}

const TWO_POW_32 = 2 ** 32;
const HI_FLAG_BITS = 0xff00_0000;
const LO_FLAG_BITS = 0x0000_01ff;
const HI_OFFSET_BITS = 0x00ff_ffff;
const LO_OFFSET_BITS = 0xffff_fe00;

/**
 * How many standard (8-byte) entries after `index` (at most `limit`) continue the run of entry
 * `index`, found by comparing raw words with the entry the run predicts: the same word for entries
 * without a host cluster (unallocated, zero), the next host cluster with the same flag bits otherwise.
 * Such an entry classifies exactly like the validated one before it, so only the file-end check is
 * repeated. A map of a huge sparse image walks millions of entries, and classifying each one as an
 * object dominated it; anything unexpected ends the scan and the caller classifies that entry.
 */
function continuingStandardEntries(md: Qcow2Metadata, table: Buffer, index: number, limit: number): number {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const hi0 = view.getUint32(index * 8);
  const lo0 = view.getUint32(index * 8 + 4);
  const end = Math.min(md.layout.l2Entries, index + 1 + limit);
  let i = index + 1;
  if ((hi0 & HI_OFFSET_BITS) === 0 && (lo0 & LO_OFFSET_BITS) === 0) {
    while (i < end && view.getUint32(i * 8) === hi0 && view.getUint32(i * 8 + 4) === lo0) i++;
    return i - index - 1;
  }
  const cs = md.clusterSize;
  const hiFlags = hi0 & HI_FLAG_BITS;
  const loFlags = lo0 & LO_FLAG_BITS;
  const lastValidHost = md.refcounts.allocEnd - cs;
  for (let host = entryOffset(hi0, lo0) + cs; i < end && host <= lastValidHost; i++, host += cs) {
    const hi = (Math.floor(host / TWO_POW_32) | hiFlags) >>> 0;
    const lo = ((host % TWO_POW_32) | loFlags) >>> 0;
    if (view.getUint32(i * 8) !== hi || view.getUint32(i * 8 + 4) !== lo) break;
  }
  return i - index - 1;
}

/**
 * The one lookup (QEMU qcow2_get_host_offset): what backs `offset` in this layer, and for how many
 * bytes (≤ maxBytes) the answer stays the same. Read and blockStatus both use it.
 */
export async function getHostOffset(
  md: Qcow2Metadata,
  offset: number,
  maxBytes: number,
): Promise<HostMapping> {
  const l1Index = l1IndexOf(md.layout, offset);
  const { l2Offset } = md.l2OffsetAt(l1Index);
  if (l2Offset === 0) return unallocatedRun(md, l1Index, offset, maxBytes);
  return mapInTable(md, await md.l2.get(l2Offset), offset, maxBytes);
}

/** getHostOffset without I/O: undefined when the L2 table is not cached (the caller takes the slow path). */
export function getHostOffsetCached(
  md: Qcow2Metadata,
  offset: number,
  maxBytes: number,
): HostMapping | undefined {
  const l1Index = l1IndexOf(md.layout, offset);
  const { l2Offset } = md.l2OffsetAt(l1Index);
  if (l2Offset === 0) return unallocatedRun(md, l1Index, offset, maxBytes);
  const table = md.l2.peek(l2Offset);
  return table && mapInTable(md, table, offset, maxBytes);
}

/** Coalesces consecutive empty L1 entries: big sparse images are answered in a few steps. */
function unallocatedRun(md: Qcow2Metadata, l1Index: number, offset: number, maxBytes: number): HostMapping {
  const coverage = md.layout.l2Coverage;
  let bytes = (l1Index + 1) * coverage - offset;
  while (bytes < maxBytes && md.l2OffsetAt(++l1Index).l2Offset === 0) bytes += coverage;
  return { type: "unallocated", bytes: Math.min(bytes, maxBytes), hostOffset: 0 };
}

function mapInTable(md: Qcow2Metadata, table: Buffer, offset: number, maxBytes: number): HostMapping {
  const layout = md.layout;
  const g = layout.subclusterSize;
  const units = layout.subclustersPerCluster;
  let index = l2IndexOf(layout, offset);
  let sc = Math.floor((offset % layout.clusterSize) / g);
  const first = classifyAt(md, table, index, sc);
  const inUnit = offset % g;
  if (first.compressed) {
    return {
      type: "compressed",
      bytes: Math.min(maxBytes, layout.clusterSize - (offset % layout.clusterSize)),
      hostOffset: 0,
      compressed: first.compressed,
    };
  }
  const hostBacked = first.hostOffset !== 0;
  let bytes = g - inUnit;
  let expectedHost = first.hostOffset + sc * g + g;
  for (;;) {
    if (units === 1 && bytes < maxBytes) {
      const more = continuingStandardEntries(md, table, index, Math.ceil((maxBytes - bytes) / g));
      index += more;
      bytes += more * g;
      expectedHost += more * g;
    }
    if (bytes >= maxBytes) break;
    sc++;
    if (sc === units) {
      sc = 0;
      index++;
      if (index >= layout.l2Entries) break;
    }
    const e = classifyAt(md, table, index, sc);
    if (e.type !== first.type) break;
    if (hostBacked) {
      if (e.hostOffset + sc * g !== expectedHost) break;
      expectedHost += g;
    }
    bytes += g;
  }
  return {
    type: first.type,
    bytes: Math.min(bytes, maxBytes),
    hostOffset: hostBacked ? first.hostOffset + (offset % layout.clusterSize) : 0,
  };
}

/** L2 tables read together when a block status walk misses the cache. */
const L2_READ_AHEAD = 8;

/**
 * Before a block status query over [offset, offset + length): when the L2 table at `offset` is not
 * cached, reads it together with the next uncached tables the range needs (up to L2_READ_AHEAD, in
 * parallel). A map of a large scattered image otherwise waits for one table read per L2 table, one
 * after the other. Everything is awaited here, under the image lock, so no read lands in the cache
 * after a later change; a bad L1 entry ahead just ends the read-ahead (the lookup reports it when it
 * gets there), and only the first table's read error is reported.
 */
export async function readAheadL2(md: Qcow2Metadata, offset: number, length: number): Promise<void> {
  const layout = md.layout;
  const first = l1IndexOf(layout, offset);
  const { l2Offset } = md.l2OffsetAt(first);
  if (l2Offset === 0 || md.l2.has(l2Offset)) return;
  const last = Math.min(md.header.l1Size - 1, l1IndexOf(layout, offset + length - 1));
  const ahead: number[] = [];
  for (let i = first + 1; i <= last && ahead.length < L2_READ_AHEAD - 1; i++) {
    let next: number;
    try {
      next = md.l2OffsetAt(i).l2Offset;
    } catch {
      break;
    }
    if (next !== 0 && next !== l2Offset && !md.l2.has(next) && !ahead.includes(next)) ahead.push(next);
  }
  const [own] = await Promise.allSettled([md.l2.get(l2Offset), ...ahead.map((at) => md.l2.get(at))]);
  if (own?.status === "rejected") throw own.reason;
}

/**
 * The L2 table for `l1Index`, ready to be modified: allocated if missing, copied if shared with a
 * snapshot (COPIED clear). The caller marks it dirty after changing it.
 */
export async function getL2ForWrite(
  md: Qcow2Metadata,
  l1Index: number,
): Promise<{ table: Buffer; offset: number }> {
  const { l2Offset, copied } = md.l2OffsetAt(l1Index);
  if (l2Offset !== 0 && copied) return { table: await md.l2.get(l2Offset), offset: l2Offset };
  const old = l2Offset !== 0 ? await md.l2.get(l2Offset) : undefined;
  const offset = await md.refcounts.allocate(1);
  const table = md.l2.install(offset, old);
  md.setL1Entry(l1Index, offset, true);
  if (l2Offset !== 0) {
    md.l2.drop(l2Offset);
    md.refcounts.free(l2Offset);
  }
  return { table, offset };
}

/** Drops this layer's reference to the host storage of an entry (deferred until the new entry is durable). */
export function releaseHost(md: Qcow2Metadata, e: ClassifiedEntry): void {
  if (e.compressed) {
    const cs = md.clusterSize;
    const first = Math.floor(e.compressed.offset / cs) * cs;
    const last = Math.floor((e.compressed.offset + e.compressed.length - 1) / cs) * cs;
    for (let at = first; at <= last; at += cs) md.refcounts.free(at);
  } else if (e.hostOffset !== 0) {
    md.refcounts.free(e.hostOffset);
  }
}

/** Refuses writes into clusters that hold metadata (QEMU's overlap check, "cached" mode). */
export async function assertNoMetadataOverlap(
  md: Qcow2Metadata,
  hostOffset: number,
  length: number,
): Promise<void> {
  const end = hostOffset + length;
  const h = md.header;
  const ranges: Array<[number, number]> = [
    [0, md.clusterSize],
    [h.l1TableOffset, h.l1TableOffset + h.l1Size * 8],
    [h.refcountTableOffset, h.refcountTableOffset + h.refcountTableClusters * md.clusterSize],
  ];
  if (h.nbSnapshots > 0) ranges.push([h.snapshotsOffset, h.snapshotsOffset + md.clusterSize]);
  for (const [a, b] of ranges) {
    if (hostOffset < b && a < end) {
      await md.markCorrupt();
      throw corrupt("QCOW2_WRITE_OVERLAPS_METADATA", `preventing invalid write on metadata at ${hostOffset}`);
    }
  }
  const cs = md.clusterSize;
  for (let at = hostOffset - (hostOffset % cs); at < end; at += cs) {
    if (md.l2.has(at) || md.refcounts.blocks.has(at)) {
      await md.markCorrupt();
      throw corrupt("QCOW2_WRITE_OVERLAPS_METADATA", `preventing invalid write on metadata at ${at}`);
    }
  }
}

interface ClusterPlan {
  table: Buffer;
  tableOffset: number;
  index: number;
  old: ClassifiedEntry;
  /** Host cluster receiving the data; undefined until allocated. */
  dest: number | undefined;
  /** What gets written: the whole new cluster (COW), or the caller's slice (in place, at `within`). */
  piece: Uint8Array;
  within: number;
  inPlace: boolean;
  /** The piece is a whole new cluster carrying copied head/tail bytes (copy-on-write). */
  cow: boolean;
}

export type LayerReader = (offset: number, into: Uint8Array) => Promise<void>;

/**
 * Writes `data` at guest `offset`: in place where the cluster is ours alone (COPIED) and fully
 * allocated; otherwise into newly allocated clusters, with the untouched head/tail of partial clusters
 * copied from what this layer currently reads there (backing, zeros, compressed or shared data).
 * Host-contiguous pieces go out as one request; L2 entries change only after the data is written.
 */
export async function writeClusters(
  md: Qcow2Metadata,
  offset: number,
  data: Uint8Array,
  readCurrent: LayerReader,
): Promise<void> {
  const layout = md.layout;
  const cs = layout.clusterSize;
  const plans: ClusterPlan[] = [];
  let pos = offset;
  const end = offset + data.length;
  while (pos < end) {
    const l1Index = l1IndexOf(layout, pos);
    const { table, offset: tableOffset } = await getL2ForWrite(md, l1Index);
    const tableEnd = Math.min(end, (l1Index + 1) * layout.l2Coverage);
    while (pos < tableEnd) {
      const index = l2IndexOf(layout, pos);
      const clusterBase = pos - (pos % cs);
      const within = pos - clusterBase;
      const n = Math.min(tableEnd - pos, cs - within);
      const slice = data.subarray(pos - offset, pos - offset + n);
      const { e, alloc } = classifyCluster(md, table, index);
      const inPlace = e.type === "normal" && e.copied && (!md.ctx.extendedL2 || alloc === FULL_MASK);
      let full: Buffer | undefined;
      let dest: number | undefined;
      if (!inPlace) {
        // A whole-cluster write needs no copy-on-write buffer: the caller's bytes go out as they are.
        if (n < cs) {
          full = Buffer.alloc(cs);
          await readCurrent(clusterBase, full);
          full.set(slice, within);
        }
        const reusable = e.copied && e.hostOffset !== 0 && e.type !== "compressed";
        dest = reusable ? e.hostOffset : undefined;
      } else {
        dest = e.hostOffset;
      }
      plans.push({
        table,
        tableOffset,
        index,
        old: e,
        dest,
        piece: full ?? slice,
        within,
        inPlace,
        cow: !inPlace && n < cs,
      });
      pos += n;
    }
  }

  // Allocate each run of clusters that needs new storage in one contiguous piece.
  const placed: Array<{ plan: ClusterPlan; cluster: number; host: number }> = [];
  const place = (plan: ClusterPlan, cluster: number): void => {
    placed.push({ plan, cluster, host: cluster + (plan.inPlace ? plan.within : 0) });
  };
  let run: ClusterPlan[] = [];
  const allocateRun = async () => {
    if (run.length === 0) return;
    const base = await md.refcounts.allocate(run.length);
    for (const [k, plan] of run.entries()) place(plan, base + k * cs);
    run = [];
  };
  for (const plan of plans) {
    if (plan.dest === undefined) {
      run.push(plan);
      continue;
    }
    await allocateRun();
    place(plan, plan.dest);
  }
  await allocateRun();

  // Write host-contiguous pieces as single requests (a short in-place piece never has a successor).
  let group: { start: number; end: number; buffers: Uint8Array[]; cow: boolean } | undefined;
  const writeGroup = async () => {
    if (!group) return;
    await assertNoMetadataOverlap(md, group.start, group.end - group.start);
    await md.file.writev(group.start, group.buffers, { point: group.cow ? "cow_write" : "data_write" });
    md.noteWrite();
    group = undefined;
  };
  for (const { plan, host } of placed) {
    if (group && host === group.end) {
      group.buffers.push(plan.piece);
      group.end += plan.piece.length;
      group.cow ||= plan.cow;
      continue;
    }
    await writeGroup();
    group = { start: host, end: host + plan.piece.length, buffers: [plan.piece], cow: plan.cow };
  }
  await writeGroup();

  // Now point the L2 entries at the data (coalesced: all changes land in cached tables).
  for (const { plan, cluster } of placed) {
    if (plan.inPlace) continue;
    const { hi, lo } = encodeStandardEntry(cluster, false, true);
    writeL2Raw(md, plan.table, plan.index, hi, lo, md.ctx.extendedL2 ? FULL_MASK : 0, 0);
    md.l2.markDirty(plan.tableOffset);
    if (plan.old.compressed || (plan.old.hostOffset !== 0 && plan.old.hostOffset !== cluster))
      releaseHost(md, plan.old);
  }
}

export interface ZeroPlan {
  /** Guest offset of the first whole cluster and the number of whole clusters. */
  offset: number;
  clusters: number;
  /** true: free host clusters; false: keep them allocated (zero-alloc) where possible. */
  unmap: boolean;
  /** What an emptied cluster becomes: zero flag (v3) or unallocated (v2 / discard without backing). */
  mode: "zero-flag" | "unallocate";
}

/** Marks whole clusters as zero (v3 zero flag) or unallocates them; old storage is released afterwards. */
export async function zeroClusters(md: Qcow2Metadata, plan: ZeroPlan): Promise<void> {
  const layout = md.layout;
  const cs = layout.clusterSize;
  let pos = plan.offset;
  const end = plan.offset + plan.clusters * cs;
  while (pos < end) {
    const l1Index = l1IndexOf(layout, pos);
    const tableEnd = Math.min(end, (l1Index + 1) * layout.l2Coverage);
    if (plan.mode === "unallocate" && md.l2OffsetAt(l1Index).l2Offset === 0) {
      pos = tableEnd; // no table: nothing here to unallocate
      continue;
    }
    const { table, offset: tableOffset } = await getL2ForWrite(md, l1Index);
    for (; pos < tableEnd; pos += cs) {
      const index = l2IndexOf(layout, pos);
      const { e } = classifyCluster(md, table, index);
      const keep = !plan.unmap && e.copied && e.hostOffset !== 0 && e.type !== "compressed";
      if (plan.mode === "unallocate") {
        if (e.type === "unallocated" && e.hostOffset === 0) continue;
        writeL2Raw(md, table, index, 0, 0, 0, 0);
        releaseHost(md, e);
      } else if (md.ctx.extendedL2) {
        const host = keep ? e.hostOffset : 0;
        const { hi, lo } = host ? encodeStandardEntry(host, false, true) : { hi: 0, lo: 0 };
        writeL2Raw(md, table, index, hi, lo, 0, FULL_MASK);
        if (!keep) releaseHost(md, e);
      } else {
        if (e.type === "zero-plain" || (e.type === "zero-alloc" && keep)) continue;
        const { hi, lo } = keep
          ? encodeStandardEntry(e.hostOffset, true, true)
          : encodeStandardEntry(0, true, false);
        writeL2Raw(md, table, index, hi, lo);
        if (!keep) releaseHost(md, e);
      }
      md.l2.markDirty(tableOffset);
    }
  }
}

/**
 * Allocates host clusters for every cluster of [offset, end) that has none (preallocation). Entries
 * become zero-alloc on v3 and plain allocated clusters on v2 (fresh clusters past the old end read as
 * zeros). Returns the host runs allocated, for fallocate / zero writing.
 */
export async function preallocateClusters(
  md: Qcow2Metadata,
  offset: number,
  end: number,
): Promise<Array<[number, number]>> {
  const layout = md.layout;
  const cs = layout.clusterSize;
  const runs: Array<[number, number]> = [];
  let pos = offset - (offset % cs);
  while (pos < end) {
    const l1Index = l1IndexOf(layout, pos);
    const tableEnd = Math.min(end, (l1Index + 1) * layout.l2Coverage);
    const { table, offset: tableOffset } = await getL2ForWrite(md, l1Index);
    const needs: number[] = [];
    const first = l2IndexOf(layout, pos);
    const count = Math.ceil((tableEnd - pos) / cs);
    for (let index = first; index < first + count; index++) {
      if (isEmptyEntry(md, table, index)) {
        needs.push(index);
        continue;
      }
      const { e } = classifyCluster(md, table, index);
      if (e.type === "unallocated" || e.type === "zero-plain") needs.push(index);
    }
    if (needs.length > 0) {
      const base = await md.refcounts.allocateFresh(needs.length);
      const zero = md.ctx.version === 3 && !md.ctx.extendedL2;
      const bitmapZero = md.ctx.extendedL2 ? FULL_MASK : 0;
      for (let k = 0; k < needs.length; k++) {
        const { hi, lo } = encodeStandardEntry(base + k * cs, zero, true);
        writeL2Raw(md, table, needs[k] as number, hi, lo, 0, bitmapZero);
      }
      md.l2.markDirty(tableOffset);
      runs.push([base, needs.length * cs]);
    }
    pos = tableEnd;
  }
  return runs;
}

/** Frees every cluster at or beyond guest offset `from` (cluster-aligned) up to `end` (shrink). */
export async function freeClustersFrom(md: Qcow2Metadata, from: number, end: number): Promise<void> {
  const layout = md.layout;
  const cs = layout.clusterSize;
  let pos = from;
  while (pos < end) {
    const l1Index = l1IndexOf(layout, pos);
    const tableStart = l1Index * layout.l2Coverage;
    const tableEnd = Math.min(end, tableStart + layout.l2Coverage);
    const { l2Offset } = md.l2OffsetAt(l1Index);
    if (l2Offset !== 0) {
      if (pos === tableStart) {
        // The whole table goes: release every cluster it maps, then the table itself.
        const table = await md.l2.get(l2Offset);
        for (let index = 0; index < layout.l2Entries; index++)
          releaseHost(md, classifyCluster(md, table, index).e);
        md.setL1Entry(l1Index, 0, false);
        md.l2.drop(l2Offset);
        md.refcounts.free(l2Offset);
      } else {
        await zeroClusters(md, {
          offset: pos,
          clusters: (tableEnd - pos) / cs,
          unmap: true,
          mode: "unallocate",
        });
      }
    }
    pos = tableEnd;
  }
}

export function assertInImage(md: Qcow2Metadata, offset: number, length: number): void {
  if (offset < 0 || length < 0 || offset + length > md.header.size) {
    throw new EngineError("OUT_OF_RANGE", "qcow2: request beyond the end of the image", {
      reason: "QCOW2_OUT_OF_RANGE",
    });
  }
}
