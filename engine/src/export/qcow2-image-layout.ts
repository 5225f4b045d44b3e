import type { BlockImage } from "../block-image.js";
import { EngineError } from "../errors.js";
import {
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MIN_CLUSTER_BITS,
  type Qcow2Header,
  serializeHeader,
} from "../formats/qcow2/header.js";
import { type Layout, l1EntriesFor, makeLayout } from "../formats/qcow2/layout.js";

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

export interface StreamLayout {
  layout: Layout;
  version: 2 | 3;
  l1Size: number;
  l1Clusters: number;
}

/** Geometry shared by both qcow2 export paths: cluster size, version and L1 size for `image`. */
export function streamLayout(
  image: BlockImage,
  opts: { clusterSize?: number; compat?: "0.10" | "1.1" },
): StreamLayout {
  const clusterSize = opts.clusterSize ?? 65536;
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new EngineError("INVALID_ARGUMENT", "cluster size must be a power of two from 512 B to 2 MiB", {
      reason: "QCOW2_BAD_CLUSTER_SIZE",
    });
  }
  const layout = makeLayout(clusterBits, EXPORT_REFCOUNT_ORDER, false);
  const l1Size = l1EntriesFor(layout, image.virtualSize);
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw new EngineError("INVALID_ARGUMENT", "image too large for this cluster size", {
      reason: "QCOW2_IMAGE_TOO_BIG",
    });
  }
  return {
    layout,
    version: opts.compat === "0.10" ? 2 : 3,
    l1Size,
    l1Clusters: Math.max(1, Math.ceil((l1Size * 8) / clusterSize)),
  };
}
