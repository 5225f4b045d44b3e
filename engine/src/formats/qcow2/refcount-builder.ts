import { splitNumber } from "../../binary/big-endian.js";
import { EngineError } from "../../errors.js";
import { MAX_REFTABLE_BYTES } from "./header.js";
import type { Layout } from "./layout.js";
import { maxRefcount, setRefcountEntry } from "./refcount-entry.js";

/** A complete refcount structure (blocks then table) placed at `startCluster`, describing itself. */
export interface RefcountStructure {
  startCluster: number;
  blockCount: number;
  tableClusters: number;
  /** Clusters covered, including the structure itself. */
  totalClusters: number;
  /** Blocks followed by the table: one contiguous write at startCluster × clusterSize. */
  bytes: Buffer;
  table: Buffer;
  tableOffset: number;
}

/**
 * Builds refcount blocks + table for clusters [0, startCluster) with counts from `countOf`, placed
 * right after them. The sizes are found by fixpoint, because the structure must count itself (QEMU's
 * rebuild_refcount_structure and qcow2_create2 solve the same problem).
 */
export function buildRefcountStructure(
  layout: Layout,
  startCluster: number,
  countOf: (cluster: number) => number,
): RefcountStructure {
  const cs = layout.clusterSize;
  const perBlock = layout.refcountsPerBlock;
  let blockCount = 1;
  let tableClusters = 1;
  for (;;) {
    const total = startCluster + blockCount + tableClusters;
    const nextBlocks = Math.ceil(total / perBlock);
    const nextTable = Math.ceil((nextBlocks * 8) / cs);
    if (nextBlocks === blockCount && nextTable === tableClusters) break;
    blockCount = Math.max(blockCount, nextBlocks);
    tableClusters = Math.max(tableClusters, nextTable);
  }
  if (tableClusters * cs > MAX_REFTABLE_BYTES) {
    throw new EngineError("NO_SPACE", "qcow2: refcount table would exceed 8 MiB", {
      reason: "QCOW2_REFTABLE_TOO_LARGE",
    });
  }
  const totalClusters = startCluster + blockCount + tableClusters;
  const bytes = Buffer.alloc((blockCount + tableClusters) * cs);
  const max = maxRefcount(layout.refcountBits);
  for (let c = 0; c < totalClusters; c++) {
    const count = c < startCluster ? countOf(c) : 1;
    if (count === 0) continue;
    if (count > max) {
      throw new EngineError(
        "UNSUPPORTED",
        `qcow2: ${count} references do not fit ${layout.refcountBits}-bit refcounts`,
        {
          reason: "QCOW2_REFCOUNT_OVERFLOW",
        },
      );
    }
    const block = Math.floor(c / perBlock);
    setRefcountEntry(bytes.subarray(block * cs, (block + 1) * cs), c % perBlock, layout.refcountBits, count);
  }
  const table = bytes.subarray(blockCount * cs);
  for (let i = 0; i < blockCount; i++) {
    const { hi, lo } = splitNumber((startCluster + i) * cs);
    table.writeUInt32BE(hi, i * 8);
    table.writeUInt32BE(lo, i * 8 + 4);
  }
  return {
    startCluster,
    blockCount,
    tableClusters,
    totalClusters,
    bytes,
    table: Buffer.from(table),
    tableOffset: (startCluster + blockCount) * cs,
  };
}
