/**
 * Pure geometry of a qcow2 image: how guest offsets map onto L1/L2 indices and how many entries the
 * tables have. Everything here is arithmetic on numbers below 2^53 (no bitwise operators).
 */
export interface Layout {
  clusterBits: number;
  clusterSize: number;
  /** Bytes per L2 entry: 8, or 16 with extended L2 (entry + subcluster bitmap). */
  l2EntryBytes: 8 | 16;
  l2Entries: number;
  /** Guest bytes covered by one L2 table. */
  l2Coverage: number;
  subclustersPerCluster: number;
  subclusterSize: number;
  refcountBits: number;
  refcountsPerBlock: number;
  /** Host bytes covered by one refcount block. */
  refblockCoverage: number;
}

export function makeLayout(clusterBits: number, refcountOrder: number, extendedL2: boolean): Layout {
  const clusterSize = 2 ** clusterBits;
  const l2EntryBytes = extendedL2 ? 16 : 8;
  const l2Entries = clusterSize / l2EntryBytes;
  const refcountBits = 2 ** refcountOrder;
  const refcountsPerBlock = (clusterSize * 8) / refcountBits;
  const subclustersPerCluster = extendedL2 ? 32 : 1;
  return {
    clusterBits,
    clusterSize,
    l2EntryBytes,
    l2Entries,
    l2Coverage: l2Entries * clusterSize,
    subclustersPerCluster,
    subclusterSize: clusterSize / subclustersPerCluster,
    refcountBits,
    refcountsPerBlock,
    refblockCoverage: refcountsPerBlock * clusterSize,
  };
}

export function l1IndexOf(layout: Layout, guestOffset: number): number {
  return Math.floor(guestOffset / layout.l2Coverage);
}

export function l2IndexOf(layout: Layout, guestOffset: number): number {
  return Math.floor(guestOffset / layout.clusterSize) % layout.l2Entries;
}

export function offsetInCluster(layout: Layout, offset: number): number {
  return offset % layout.clusterSize;
}

export function clusterStart(layout: Layout, offset: number): number {
  return offset - (offset % layout.clusterSize);
}

export function clustersFor(layout: Layout, bytes: number): number {
  return Math.ceil(bytes / layout.clusterSize);
}

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/** Number of L1 entries needed to map `size` guest bytes (QEMU size_to_l1). */
export function l1EntriesFor(layout: Layout, size: number): number {
  return Math.ceil(size / layout.l2Coverage);
}

/** Refcount table index and in-block index of a host cluster. */
export function refcountIndexOf(
  layout: Layout,
  hostOffset: number,
): { tableIndex: number; blockIndex: number } {
  const cluster = Math.floor(hostOffset / layout.clusterSize);
  return {
    tableIndex: Math.floor(cluster / layout.refcountsPerBlock),
    blockIndex: cluster % layout.refcountsPerBlock,
  };
}

/** Compressed descriptor geometry: bits 0..x-1 hold the offset, x..61 the additional sector count. */
export function compressedOffsetBits(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

/** Groups ascending integers into runs of consecutive values (e.g. dirty sectors to write together). */
export function consecutiveRuns(sorted: readonly number[]): Array<{ first: number; last: number }> {
  const runs: Array<{ first: number; last: number }> = [];
  for (const value of sorted) {
    const run = runs[runs.length - 1];
    if (run && value === run.last + 1) run.last = value;
    else runs.push({ first: value, last: value });
  }
  return runs;
}
