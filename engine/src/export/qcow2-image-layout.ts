import { type Qcow2Header, serializeHeader } from "../formats/qcow2/header.js";
import type { Layout } from "../formats/qcow2/layout.js";

/** Refcount order of exported images: 16-bit refcounts, QEMU's default. */
export const EXPORT_REFCOUNT_ORDER = 4;

/**
 * Refcount table and block counts that cover `otherClusters` plus themselves: the same fixpoint
 * QEMU and the qcow2 driver's create use, since the structures must count their own clusters.
 */
export function refcountGeometry(
  layout: Layout,
  otherClusters: number,
): { tableClusters: number; blocks: number } {
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = otherClusters + blocks + tableClusters;
    const nextBlocks = Math.max(blocks, Math.ceil(total / layout.refcountsPerBlock));
    const nextTable = Math.max(tableClusters, Math.ceil((nextBlocks * 8) / layout.clusterSize));
    if (nextBlocks === blocks && nextTable === tableClusters) return { tableClusters, blocks };
    blocks = nextBlocks;
    tableClusters = nextTable;
  }
}

export interface ExportHeaderFields {
  version: 2 | 3;
  layout: Layout;
  size: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
}

/** Cluster 0 of an exported image: the header serialized by the qcow2 driver, zero-padded. */
export function headerCluster(f: ExportHeaderFields): Uint8Array {
  const header: Qcow2Header = {
    version: f.version,
    backingFileOffset: 0,
    backingFile: undefined,
    clusterBits: f.layout.clusterBits,
    size: f.size,
    cryptMethod: 0,
    l1Size: f.l1Size,
    l1TableOffset: f.l1TableOffset,
    refcountTableOffset: f.refcountTableOffset,
    refcountTableClusters: f.refcountTableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: EXPORT_REFCOUNT_ORDER,
    headerLength: f.version === 3 ? 112 : 72,
    headerTail: f.version === 3 ? new Uint8Array(8) : new Uint8Array(0),
    extensions: [],
  };
  const cluster = new Uint8Array(f.layout.clusterSize);
  cluster.set(serializeHeader(header));
  return cluster;
}
