import { throwIfAborted } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import type { CheckResult } from "../../types.js";
import type { GrainTables } from "./grain-tables.js";
import { GTE_ZEROED, type SparseLayout } from "./header.js";
import { readU32 } from "./le.js";
import { FOOTER_TAIL_SIZE, GRAIN_MARKER_SIZE } from "./markers.js";

export interface CheckInput {
  file: HostFile;
  layout: SparseLayout;
  tables: GrainTables;
  fileSize: number;
  footerOffset: number | undefined;
  signal: AbortSignal | undefined;
}

const PREFETCH_TABLES = 256;

/** A byte range of the host file and what claims it, for overlap detection. */
interface Claim {
  start: number;
  end: number;
  what: string;
  grain?: boolean;
}

/**
 * Walks every grain table (QEMU only checks that each grain starts before EOF) and also reports grains
 * that overlap metadata or each other, and redundant tables that disagree with the primary ones.
 * Findings are corruptions: VMDK has no reference counts, so there is no such thing as a leak here.
 */
export async function checkSparseImage(input: CheckInput): Promise<CheckResult> {
  const { file, layout, tables, fileSize } = input;
  const messages: string[] = [];
  let corruptions = 0;
  const report = (message: string) => {
    corruptions++;
    if (messages.length < 1000) messages.push(message);
  };
  const claims: Claim[] = [
    { start: 0, end: 512, what: "header" },
    { start: layout.descOffset, end: layout.descOffset + layout.descSize, what: "descriptor" },
    { start: layout.gdOffset, end: layout.gdOffset + layout.gdEntries * 4, what: "grain directory" },
  ];
  if (layout.rgdOffset !== undefined) {
    claims.push({
      start: layout.rgdOffset,
      end: layout.rgdOffset + layout.gdEntries * 4,
      what: "redundant grain directory",
    });
  }
  if (input.footerOffset !== undefined) {
    claims.push({ start: input.footerOffset, end: input.footerOffset + FOOTER_TAIL_SIZE, what: "footer" });
  }
  const tableBytes = layout.gtesPerGt * 4;
  const totalGrains = Math.ceil(layout.virtualSize / layout.grainSize);
  let allocated = 0;
  let compressedGrains = 0;
  const marker = new Uint8Array(GRAIN_MARKER_SIZE);
  for (let gdIndex = 0; gdIndex < layout.gdEntries; gdIndex++) {
    throwIfAborted(input.signal);
    if (gdIndex % PREFETCH_TABLES === 0) await tables.prefetch(gdIndex, PREFETCH_TABLES);
    const table = await tables.readTable(gdIndex);
    if (table === undefined) continue;
    claims.push({
      start: tables.gd[gdIndex]! * 512,
      end: tables.gd[gdIndex]! * 512 + tableBytes,
      what: `grain table ${gdIndex}`,
    });
    const redundant = await tables.readRedundantTable(gdIndex);
    if (redundant !== undefined) {
      const at = tables.rgd![gdIndex]! * 512;
      claims.push({ start: at, end: at + tableBytes, what: `redundant grain table ${gdIndex}` });
      const disagreement = compareCopies(table, redundant);
      if (disagreement === "conflict") report(`ERROR: grain table ${gdIndex} differs from its redundant copy`);
      else if (disagreement === "lagging" && messages.length < 1000)
        messages.push(`Warning: grain table ${gdIndex} and its redundant copy differ by an interrupted update`);
    } else if (layout.rgdOffset !== undefined) {
      report(`ERROR: grain table ${gdIndex} has no redundant copy`);
    }
    for (let i = 0; i < layout.gtesPerGt; i++) {
      const grainIndex = gdIndex * layout.gtesPerGt + i;
      const entry = table[i]!;
      if (entry === 0 || (entry === GTE_ZEROED && layout.zeroedGrain)) continue;
      if (grainIndex >= totalGrains) {
        report(`ERROR: grain table ${gdIndex} maps grain ${grainIndex} beyond the end of the disk`);
        continue;
      }
      const host = entry * 512;
      const sector = grainIndex * layout.grainSectors;
      if (host >= fileSize) {
        report(`ERROR: cluster offset for sector ${sector} points after EOF`);
        continue;
      }
      allocated++;
      let end = host + layout.grainSize;
      if (layout.compressed) {
        compressedGrains++;
        await file.readFull(host, marker);
        const size = readU32(marker, 8);
        end = host + GRAIN_MARKER_SIZE + size;
        if (size === 0 || size > 2 * layout.grainSize || end > fileSize) {
          report(`ERROR: compressed grain for sector ${sector} has an invalid size ${size}`);
          continue;
        }
      }
      claims.push({
        start: host,
        end: Math.min(end, fileSize),
        what: `grain for sector ${sector}`,
        grain: true,
      });
    }
  }
  // One sweep: each claim is compared with the furthest-reaching claim before it. A grain involved in
  // any overlap counts once; an overlap between two metadata structures counts once per pair.
  claims.sort((a, b) => a.start - b.start || a.end - b.end);
  const overlappingGrains = new Set<Claim>();
  let reach: Claim | undefined;
  for (const claim of claims) {
    if (reach !== undefined && claim.start < reach.end) {
      if (messages.length < 1000) messages.push(`ERROR: ${claim.what} overlaps ${reach.what}`);
      const grains = [claim, reach].filter((c) => c.grain);
      if (grains.length === 0) corruptions++;
      for (const g of grains) overlappingGrains.add(g);
      if (claim.end <= reach.end) continue;
    }
    reach = claim;
  }
  corruptions += overlappingGrains.size;
  const imageEndOffset = claims.reduce((max, c) => Math.max(max, c.end), 0);
  return {
    corruptions,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    checkErrors: 0,
    imageEndOffset,
    allocatedClusters: allocated,
    totalClusters: totalGrains,
    compressedClusters: compressedGrains,
    messages,
  };
}

/**
 * Entries are only ever set once (0 → grain, or 0 → zeroed), the primary copy first. A crash between
 * the two copies' writes leaves one side still 0: harmless, as the primary decides. Two different
 * non-zero values cannot come from an interrupted update and are reported as corruption.
 */
function compareCopies(primary: Uint32Array, redundant: Uint32Array): "same" | "lagging" | "conflict" {
  let result: "same" | "lagging" = "same";
  for (let i = 0; i < primary.length; i++) {
    const a = primary[i]!;
    const b = redundant[i]!;
    if (a === b) continue;
    if (a !== 0 && b !== 0) return "conflict";
    result = "lagging";
  }
  return result;
}
