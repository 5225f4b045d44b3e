import {
  assertNoMetadataOverlap,
  classifyCluster,
  FULL_MASK,
  getL2ForWrite,
  releaseHost,
  writeL2Raw,
} from "./cluster.js";
import { type ClassifiedEntry, encodeStandardEntry } from "./l2-entry.js";
import { l1IndexOf, l2IndexOf } from "./layout.js";
import type { Qcow2Metadata } from "./metadata.js";

/**
 * Writes whose data I/O runs outside the image lock, as QEMU does it (qcow2_co_pwritev_task): under the
 * lock the request is mapped and its new clusters allocated (refcounts in memory only); the data is then
 * written without the lock, so requests in flight overlap; the L2 entries are linked afterwards in one
 * synchronous step. The on-disk order stays data → refcounts → L2 → L1 because only the ordered flush
 * writes metadata, and it syncs every completed data write before it writes an L2 table.
 *
 * A new cluster that only part of the request covers needs copy-on-write of the rest; here that rest
 * reads as zeros (no backing, or a zero cluster) and the new cluster lies past the end of the file, so
 * nothing needs copying or zeroing. Requests that need real
 * copy-on-write (backing data, shared or compressed clusters, preallocated zero clusters, extended L2
 * subclusters) take the serialised path.
 */

export type ConcurrentWritePlan =
  | { kind: "serialised" }
  | { kind: "wait"; until: Promise<void> }
  | ReadyWrite;

export interface ReadyWrite {
  kind: "ready";
  groups: WriteGroup[];
  links: ClusterLink[];
  /** Ends the in-flight allocation marks and unpins the L2 tables (called once, success or not). */
  release: () => void;
}

interface WriteGroup {
  start: number;
  end: number;
  buffers: Uint8Array[];
  /** A partial piece of a newly allocated cluster (its copy-on-write area is known to be zeros). */
  cow: boolean;
}

interface ClusterLink {
  table: Buffer;
  tableOffset: number;
  index: number;
  cluster: number;
  old: ClassifiedEntry;
}

interface Piece {
  pos: number;
  n: number;
  l1Index: number;
  index: number;
  old: ClassifiedEntry;
  inPlace: boolean;
  slice: Uint8Array;
}

const SERIALISED = { kind: "serialised" } as const;
const UNALLOCATED: ClassifiedEntry = { type: "unallocated", hostOffset: 0, copied: false };

/**
 * Maps and allocates `data` at guest `offset`; the caller holds the image lock. Nothing changes (but
 * cached tables) unless the answer is "ready". `unallocatedReadsZero`: the layer has no backing image.
 */
export async function planConcurrentWrite(
  md: Qcow2Metadata,
  offset: number,
  data: Uint8Array,
  unallocatedReadsZero: boolean,
): Promise<ConcurrentWritePlan> {
  const layout = md.layout;
  const cs = layout.clusterSize;
  const end = offset + data.length;
  const pieces: Piece[] = [];
  for (let pos = offset; pos < end; ) {
    const l1Index = l1IndexOf(layout, pos);
    const { l2Offset } = md.l2OffsetAt(l1Index);
    const table = l2Offset === 0 ? undefined : await md.l2.get(l2Offset);
    const tableEnd = Math.min(end, (l1Index + 1) * layout.l2Coverage);
    while (pos < tableEnd) {
      const within = pos % cs;
      const n = Math.min(tableEnd - pos, cs - within);
      const pending = md.inflight.allocationAt((pos - within) / cs);
      if (pending) return { kind: "wait", until: pending };
      const index = l2IndexOf(layout, pos);
      const classified = table ? classifyCluster(md, table, index) : undefined;
      const old = classified?.e ?? UNALLOCATED;
      const inPlace =
        old.type === "normal" && old.copied && (!md.ctx.extendedL2 || classified?.alloc === FULL_MASK);
      if (!inPlace) {
        if (
          md.ctx.extendedL2 ||
          (old.type !== "normal" && old.type !== "unallocated" && old.type !== "zero-plain")
        )
          return SERIALISED;
        const readsZero = old.type === "zero-plain" || (old.type === "unallocated" && unallocatedReadsZero);
        if (n < cs && !readsZero) return SERIALISED;
      }
      pieces.push({
        pos,
        n,
        l1Index,
        index,
        old,
        inPlace,
        slice: data.subarray(pos - offset, pos - offset + n),
      });
      pos += n;
    }
  }

  const tables = new Map<number, { table: Buffer; offset: number }>();
  for (const p of pieces)
    if (!p.inPlace && !tables.has(p.l1Index)) tables.set(p.l1Index, await getL2ForWrite(md, p.l1Index));
  const clusterOf = new Map<Piece, number>();
  for (let k = 0; k < pieces.length; ) {
    if (pieces[k]?.inPlace) {
      k++;
      continue;
    }
    let j = k;
    while (j < pieces.length && !pieces[j]?.inPlace) j++;
    const run = pieces.slice(k, j);
    // A partial piece leaves the rest of its cluster unwritten, which must read as zeros: only clusters
    // never used before, past the end of the file, do (reused ones may hold old data).
    const base = run.some((p) => p.n < cs)
      ? await md.refcounts.allocateFresh(run.length)
      : await md.refcounts.allocate(run.length);
    for (const [r, p] of run.entries()) clusterOf.set(p, base + r * cs);
    k = j;
  }

  const groups: WriteGroup[] = [];
  let group: WriteGroup | undefined;
  const links: ClusterLink[] = [];
  for (const p of pieces) {
    const cluster = p.inPlace ? p.old.hostOffset : (clusterOf.get(p) as number);
    const cow = !p.inPlace && p.n < cs;
    // The copy-on-write area of a fresh cluster past the end of the file already reads as zeros: only
    // the request's bytes are written (QEMU instead zeroes the cluster with fallocate first).
    const host = cluster + (p.pos % cs);
    const buffers = [p.slice];
    const length = p.n;
    if (!p.inPlace) {
      const t = tables.get(p.l1Index) as { table: Buffer; offset: number };
      links.push({ table: t.table, tableOffset: t.offset, index: p.index, cluster, old: p.old });
    }
    if (group && host === group.end) {
      group.buffers.push(...buffers);
      group.end += length;
      group.cow ||= cow;
      continue;
    }
    group = { start: host, end: host + length, buffers, cow };
    groups.push(group);
  }
  for (const g of groups) await assertNoMetadataOverlap(md, g.start, g.end - g.start);

  for (const t of tables.values()) md.l2.pin(t.offset);
  const endAllocations = md.inflight.beginAllocations(
    pieces.filter((p) => !p.inPlace).map((p) => Math.floor(p.pos / cs)),
  );
  return {
    kind: "ready",
    groups,
    links,
    release: () => {
      endAllocations();
      for (const t of tables.values()) md.l2.unpin(t.offset);
    },
  };
}

/** Writes the data (no lock held), then links the new clusters. A failure leaves only leaked clusters. */
export async function runConcurrentWrite(md: Qcow2Metadata, plan: ReadyWrite): Promise<void> {
  try {
    for (const g of plan.groups) {
      const point = g.cow ? "cow_write" : "data_write";
      if (g.buffers.length === 1) await md.file.write(g.start, g.buffers[0] as Uint8Array, { point });
      else await md.file.writev(g.start, g.buffers, { point });
    }
    // Same synchronous step as the linking below: a flush that saw no new data since its barrier sees no new link.
    md.noteWrite();
    for (const l of plan.links) {
      const { hi, lo } = encodeStandardEntry(l.cluster, false, true);
      writeL2Raw(md, l.table, l.index, hi, lo);
      md.l2.markDirty(l.tableOffset);
      if (l.old.hostOffset !== 0 && l.old.hostOffset !== l.cluster) releaseHost(md, l.old);
    }
  } finally {
    plan.release();
  }
}
