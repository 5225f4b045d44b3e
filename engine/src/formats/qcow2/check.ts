import { throwIfAborted } from "../../errors.js";
import type { CheckResult, RepairMode } from "../../types.js";
import { readL2Raw } from "./cluster.js";
import { FIELD } from "./header.js";
import { type ClassifiedEntry, classifyL1Entry, classifyL2Entry, encodeStandardEntry } from "./l2-entry.js";
import type { Qcow2Metadata } from "./metadata.js";
import { buildRefcountStructure } from "./refcount-builder.js";
import { getRefcountEntry } from "./refcount-entry.js";

const MAX_MESSAGES = 100;

/** Reference counts rebuilt from the metadata graph, as qemu-img check computes them. */
interface Census {
  /** References per host cluster, excluding the refcount structure itself. */
  refs: Float64Array;
  /** References to refcount table / block clusters. */
  structureRefs: Float64Array;
  corruptions: number;
  messages: string[];
  allocatedClusters: number;
  compressedClusters: number;
  fragmentedClusters: number;
  /** Active table entries whose COPIED flag must be compared with the final refcount. */
  copiedChecks: Array<
    | { kind: "l1"; index: number; host: number; copied: boolean }
    | {
        kind: "l2";
        table: number;
        index: number;
        host: number;
        copied: boolean;
        raw: { hi: number; lo: number; alloc: number; zero: number };
      }
  >;
}

function note(c: Census, message: string): void {
  if (c.messages.length < MAX_MESSAGES) c.messages.push(message);
}

/**
 * qemu-img check for qcow2: rebuilds refcounts from header, L1/L2 (active and snapshots), snapshot
 * table and refcount structures, then compares them with the stored ones. A stored refcount above the
 * references is a leak (wasted space); below it is corruption (a cluster could be reused while in use).
 * Repair "leaks" lowers leaked refcounts in place; "all" rebuilds the refcount structure and fixes
 * COPIED flags.
 */
export async function checkImage(
  md: Qcow2Metadata,
  repair: RepairMode,
  signal?: AbortSignal,
): Promise<CheckResult> {
  const first = await census(md, signal);
  const stored = await compareRefcounts(md, first, false);
  const copied = await copiedMismatches(md, first);
  const messages = [...first.messages, ...stored.messages, ...copied.messages];
  const corruptionsBefore = first.corruptions + stored.corruptions + copied.count;
  if (repair === "none" || md.file.readOnly) {
    return result(md, first, { ...stored, corruptions: stored.corruptions + copied.count }, 0, 0, messages);
  }
  if (
    repair === "all" &&
    (stored.corruptions > 0 || stored.needRebuild || (stored.leaks > 0 && first.corruptions > 0))
  ) {
    await rebuildRefcounts(md, first);
  } else if (stored.leaks > 0) {
    await compareRefcounts(md, first, true);
  }
  if (repair === "all") await fixCopiedFlags(md, first);
  await md.flush();
  const again = await census(md, signal);
  const after = await compareRefcounts(md, again, false);
  const copiedAfter = await copiedMismatches(md, again);
  const corruptionsAfter = again.corruptions + after.corruptions + copiedAfter.count;
  return result(
    md,
    again,
    { ...after, corruptions: after.corruptions + copiedAfter.count },
    Math.max(0, stored.leaks - after.leaks),
    Math.max(0, corruptionsBefore - corruptionsAfter),
    messages,
  );
}

function result(
  md: Qcow2Metadata,
  c: Census,
  s: { leaks: number; corruptions: number; imageEnd: number },
  leaksFixed: number,
  corruptionsFixed: number,
  messages: string[],
): CheckResult {
  return {
    corruptions: c.corruptions + s.corruptions,
    leaks: s.leaks,
    leaksFixed,
    corruptionsFixed,
    checkErrors: 0,
    imageEndOffset: s.imageEnd,
    allocatedClusters: c.allocatedClusters,
    totalClusters: Math.ceil(md.header.size / md.clusterSize),
    fragmentedClusters: c.fragmentedClusters,
    compressedClusters: c.compressedClusters,
    messages: messages.slice(0, MAX_MESSAGES),
  };
}

async function census(md: Qcow2Metadata, signal?: AbortSignal): Promise<Census> {
  const cs = md.clusterSize;
  const fileSize = await md.file.size();
  const clusters = Math.ceil(Math.max(fileSize, md.refcounts.allocEnd) / cs);
  const c: Census = {
    refs: new Float64Array(clusters),
    structureRefs: new Float64Array(clusters),
    corruptions: 0,
    messages: [],
    allocatedClusters: 0,
    compressedClusters: 0,
    fragmentedClusters: 0,
    copiedChecks: [],
  };
  const add = (what: string, offset: number, bytes: number, into = c.refs, times = 1): boolean => {
    if (bytes <= 0) return true;
    const firstCluster = Math.floor(offset / cs);
    const lastCluster = Math.floor((offset + bytes - 1) / cs);
    if (lastCluster >= clusters) {
      c.corruptions++;
      note(c, `ERROR ${what} at ${offset} is outside the image`);
      return false;
    }
    for (let k = firstCluster; k <= lastCluster; k++) into[k] = (into[k] ?? 0) + times;
    return true;
  };
  const h = md.header;
  add("header", 0, cs);
  add("refcount table", h.refcountTableOffset, h.refcountTableClusters * cs, c.structureRefs);
  for (let i = 0; i < md.refcounts.tableEntries; i++) {
    let block: number;
    try {
      block = md.refcounts.blockOffset(i);
    } catch {
      c.corruptions++;
      note(c, `ERROR refcount block ${i} is not cluster aligned`);
      continue;
    }
    if (block !== 0) add(`refcount block ${i}`, block, cs, c.structureRefs);
  }
  if (h.nbSnapshots > 0) add("snapshot table", h.snapshotsOffset, Math.max(1, md.snapshotTableBytes));

  await walkL1(md, c, add, md.l1, h.l1TableOffset, h.l1Size, true, signal);
  for (const snap of md.snapshots) {
    const bytes = snap.l1Size * 8;
    const l1 = Buffer.alloc(bytes);
    await md.file.readFull(snap.l1TableOffset, l1);
    await walkL1(md, c, add, l1, snap.l1TableOffset, snap.l1Size, false, signal);
  }
  return c;
}

type Adder = (what: string, offset: number, bytes: number, into?: Float64Array, times?: number) => boolean;

async function walkL1(
  md: Qcow2Metadata,
  c: Census,
  add: Adder,
  l1: Buffer,
  l1Offset: number,
  l1Size: number,
  active: boolean,
  signal: AbortSignal | undefined,
): Promise<void> {
  const cs = md.clusterSize;
  add(active ? "active L1 table" : "snapshot L1 table", l1Offset, l1Size * 8);
  // Each distinct L2 table is walked once however many entries point at it (bounded work).
  const tables = new Map<number, number>();
  for (let i = 0; i < l1Size; i++) {
    let entry: { l2Offset: number; copied: boolean };
    try {
      entry = classifyL1Entry(l1.readUInt32BE(i * 8), l1.readUInt32BE(i * 8 + 4), cs, i);
    } catch (err) {
      c.corruptions++;
      note(c, `ERROR ${err instanceof Error ? err.message : "bad L1 entry"}`);
      continue;
    }
    if (entry.l2Offset === 0) continue;
    if (!add(`L2 table (L1 index ${i})`, entry.l2Offset, cs)) continue;
    if (active) c.copiedChecks.push({ kind: "l1", index: i, host: entry.l2Offset, copied: entry.copied });
    tables.set(entry.l2Offset, (tables.get(entry.l2Offset) ?? 0) + 1);
  }
  let lastHost = -1;
  for (const [l2Offset, times] of tables) {
    throwIfAborted(signal);
    const table = await md.l2.get(l2Offset);
    for (let index = 0; index < md.layout.l2Entries; index++) {
      const raw = readL2Raw(md, table, index);
      let e: ClassifiedEntry;
      try {
        e = classifyL2Entry(md.ctx, raw.hi, raw.lo, raw.alloc, raw.zero, 0);
        if (md.ctx.extendedL2 && e.type !== "compressed") {
          for (let sc = 1; sc < 32; sc++) classifyL2Entry(md.ctx, raw.hi, raw.lo, raw.alloc, raw.zero, sc);
        }
      } catch (err) {
        c.corruptions++;
        note(
          c,
          `ERROR ${err instanceof Error ? err.message : "bad L2 entry"} (L2 table at ${l2Offset}, index ${index})`,
        );
        continue;
      }
      if (e.compressed) {
        if (active) c.compressedClusters++;
        if (active) c.allocatedClusters++;
        add("compressed cluster", e.compressed.offset, e.compressed.length, c.refs, times);
        continue;
      }
      if (e.type === "normal" && active) {
        c.allocatedClusters++;
        if (lastHost !== -1 && e.hostOffset !== lastHost + cs) c.fragmentedClusters++;
        lastHost = e.hostOffset;
      }
      if (e.type === "zero-plain" && active) c.allocatedClusters++;
      if (e.hostOffset === 0) continue;
      if (e.type === "zero-alloc" && active) c.allocatedClusters++;
      if (!add(`data cluster (L2 table at ${l2Offset}, index ${index})`, e.hostOffset, cs, c.refs, times))
        continue;
      if (active)
        c.copiedChecks.push({
          kind: "l2",
          table: l2Offset,
          index,
          host: e.hostOffset,
          copied: e.copied,
          raw,
        });
    }
  }
}

/** Compares census with stored refcounts; with `fixLeaks`, lowers leaked refcounts to the reference count. */
async function compareRefcounts(
  md: Qcow2Metadata,
  c: Census,
  fixLeaks: boolean,
): Promise<{
  leaks: number;
  corruptions: number;
  imageEnd: number;
  needRebuild: boolean;
  messages: string[];
}> {
  const cs = md.clusterSize;
  const layout = md.layout;
  const messages: string[] = [];
  let leaks = 0;
  let corruptions = 0;
  let needRebuild = false;
  let lastUsed = 0;
  const clusters = c.refs.length;
  const storedLimit = md.refcounts.tableEntries * layout.refcountsPerBlock;
  for (let blockIndex = 0; blockIndex * layout.refcountsPerBlock < Math.max(clusters, 1); blockIndex++) {
    let block: Buffer | undefined;
    let blockBroken = false;
    try {
      const at = md.refcounts.blockOffset(blockIndex);
      if (at !== 0) {
        if (at + cs > md.refcounts.allocEnd) throw new Error("outside");
        block = await md.refcounts.blocks.get(at);
      }
    } catch {
      blockBroken = true;
      needRebuild = true;
    }
    const base = blockIndex * layout.refcountsPerBlock;
    const end = Math.min(base + layout.refcountsPerBlock, clusters);
    for (let k = base; k < end; k++) {
      const refs = (c.refs[k] ?? 0) + (c.structureRefs[k] ?? 0);
      const stored = block && !blockBroken ? getRefcountEntry(block, k - base, layout.refcountBits) : 0;
      if (refs > 0 || stored > 0) lastUsed = k;
      if (stored === refs) continue;
      if (k >= storedLimit) needRebuild = true;
      if (stored > refs) {
        leaks++;
        if (messages.length < MAX_MESSAGES)
          messages.push(`Leaked cluster ${k} refcount=${stored} reference=${refs}`);
        if (fixLeaks) await md.refcounts.update(k * cs, refs - stored);
      } else {
        corruptions++;
        needRebuild = true;
        if (messages.length < MAX_MESSAGES)
          messages.push(`ERROR cluster ${k} refcount=${stored} reference=${refs}`);
      }
    }
  }
  return { leaks, corruptions, imageEnd: (lastUsed + 1) * cs, needRebuild, messages };
}

/**
 * Replaces the refcount structure with one computed from the census, written past the end of
 * everything in use, then switches the header to it (one synced 12-byte write). The old blocks and
 * table simply become free space.
 */
async function rebuildRefcounts(md: Qcow2Metadata, c: Census): Promise<void> {
  const cs = md.clusterSize;
  await md.flush();
  let end = c.refs.length;
  while (end > 0 && c.refs[end - 1] === 0) end--;
  const start = Math.max(end, Math.ceil((await md.file.size()) / cs));
  const s = buildRefcountStructure(md.layout, start, (k) => c.refs[k] ?? 0);
  await md.file.write(start * cs, s.bytes, { point: "refcount_rebuild.write" });
  md.noteWrite();
  await md.barrier();
  await md.writeCountOffsetPair(FIELD.refcountTable, true, s.tableClusters, s.tableOffset, "refcount_rebuild.switch_table");
  md.header.refcountTableOffset = s.tableOffset;
  md.header.refcountTableClusters = s.tableClusters;
  md.installRefcounts(Buffer.from(s.table), s.tableOffset, s.tableClusters, s.totalClusters * cs);
}

/** Makes COPIED flags in the active tables match "refcount is exactly 1". */
async function fixCopiedFlags(md: Qcow2Metadata, c: Census): Promise<void> {
  for (const check of c.copiedChecks) {
    const refcount = await md.refcounts.get(check.host);
    const want = refcount === 1;
    if (want === check.copied) continue;
    if (check.kind === "l1") {
      md.setL1Entry(check.index, check.host, want);
    } else {
      const table = await md.l2.get(check.table);
      const zero = (check.raw.lo & 1) === 1;
      const { hi, lo } = encodeStandardEntry(check.host, zero, want);
      const at = check.index * md.layout.l2EntryBytes;
      table.writeUInt32BE(hi, at);
      table.writeUInt32BE(lo, at + 4);
      md.l2.markDirty(check.table);
    }
  }
}

/** Active table entries whose COPIED flag disagrees with the stored refcount (QEMU: "ERROR OFLAG_COPIED"). */
async function copiedMismatches(
  md: Qcow2Metadata,
  c: Census,
): Promise<{ count: number; messages: string[] }> {
  let count = 0;
  const messages: string[] = [];
  for (const check of c.copiedChecks) {
    let refcount: number;
    try {
      refcount = await md.refcounts.get(check.host);
    } catch {
      continue; // the broken refcount block is reported by the comparison
    }
    if ((refcount === 1) !== check.copied) {
      count++;
      if (messages.length < MAX_MESSAGES) {
        messages.push(
          `ERROR OFLAG_COPIED ${check.kind === "l1" ? "L2 table" : "data cluster"} at ${check.host}: refcount=${refcount}`,
        );
      }
    }
  }
  return { count, messages };
}
