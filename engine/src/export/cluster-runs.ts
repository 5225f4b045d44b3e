import type { BlockImage } from "../block-image.js";
import { mapExtents } from "../core/allocation-map.js";

/** What an exported qcow2 records for a run of guest clusters (unlisted clusters stay unallocated). */
export interface ClusterRun {
  first: number;
  count: number;
  /** data: the cluster holds guest bytes; zero: recorded with the v3 zero flag. */
  kind: "data" | "zero";
}

const RANK = { none: 0, zero: 1, data: 2 } as const;

/**
 * The source's allocation map at cluster granularity: a cluster is data if any byte of it is data,
 * else zero if the source records zeros there (a qcow2 zero cluster, a vmdk zeroed grain — not a raw
 * hole, which records nothing), else unallocated. Built from the map only, without reading guest data,
 * so a layout can be computed before the first byte is sent. Memory is one entry per run.
 */
export async function clusterRuns(
  image: BlockImage,
  clusterSize: number,
  recordZeros: boolean,
  signal: AbortSignal | undefined,
): Promise<ClusterRun[]> {
  const layers: BlockImage[] = [];
  for (let layer: BlockImage | undefined = image; layer !== undefined; layer = layer.backing)
    layers.push(layer);
  const runs: ClusterRun[] = [];
  for await (const extent of mapExtents(image, signal === undefined ? {} : { signal })) {
    const kind = extent.data
      ? "data"
      : recordZeros && extent.present && extent.zero && layers[extent.depth]?.format !== "raw"
        ? "zero"
        : undefined;
    if (kind === undefined) continue;
    let first = Math.floor(extent.start / clusterSize);
    const end = Math.ceil((extent.start + extent.length) / clusterSize);
    const last = runs[runs.length - 1];
    if (last !== undefined && last.first + last.count > first) {
      // Only the boundary cluster can be shared with the previous extent; the stronger kind keeps it.
      if (RANK[last.kind] >= RANK[kind]) first = last.first + last.count;
      else if (--last.count === 0) runs.pop();
    }
    if (first >= end) continue;
    const prev = runs[runs.length - 1];
    if (prev !== undefined && prev.kind === kind && prev.first + prev.count === first)
      prev.count += end - first;
    else runs.push({ first, count: end - first, kind });
  }
  return runs;
}

/** Ascending distinct L2 table indices (L1 indices) that cover at least one run. */
export function usedL2Tables(runs: readonly ClusterRun[], l2Entries: number): number[] {
  const used: number[] = [];
  for (const run of runs) {
    const from = Math.floor(run.first / l2Entries);
    const to = Math.floor((run.first + run.count - 1) / l2Entries);
    for (let i = from; i <= to; i++) if (used[used.length - 1] !== i) used.push(i);
  }
  return used;
}
