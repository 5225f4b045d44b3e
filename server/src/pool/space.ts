import fs from "node:fs/promises";
import { EngineError, type FormatName, type PreallocMode } from "@vdisk/engine";

/**
 * Free space kept back from new volumes: the catalog (SQLite WAL) must still be able to record jobs
 * failing, volumes being deleted and half-made volumes being removed when the pool runs full, or a
 * full disk would leave records behind that only a restart can clean (reliability.md T5, admission).
 */
export const SPACE_RESERVE_BYTES = 1024 * 1024;

/** Bytes an unprivileged writer may still allocate on the filesystem holding `dir` (statfs f_bavail). */
export async function availableBytes(dir: string): Promise<number> {
  const s = await fs.statfs(dir);
  return s.bavail * s.bsize;
}

/**
 * Admission for work that will allocate in the pool: refuses up front (RESOURCE_EXHAUSTED,
 * INSUFFICIENT_SPACE) when the estimate plus the reserve does not fit. It is an estimate, not a
 * reservation: concurrent work can still run the disk full, and then the host's ENOSPC is reported.
 */
export async function requireSpace(dir: string, neededBytes: number, operation: string): Promise<void> {
  const available = await availableBytes(dir);
  const required = Math.ceil(neededBytes) + SPACE_RESERVE_BYTES;
  if (available >= required) return;
  throw new EngineError(
    "NO_SPACE",
    `not enough free space in the pool for ${operation}: needs about ${required} bytes (with a reserve of ${SPACE_RESERVE_BYTES}), ${available} available`,
    {
      reason: "INSUFFICIENT_SPACE",
      metadata: { requiredBytes: String(required), availableBytes: String(available) },
    },
  );
}

export interface NewImageEstimate {
  format: FormatName;
  capacity: number;
  clusterSize: number;
  prealloc: PreallocMode;
  /** Preallocate only the first N bytes. */
  allocationBytes: number | undefined;
}

/** Worst-case host bytes a new image takes right after creation: its preallocated data plus its metadata. */
export function newImageBytes(spec: NewImageEstimate): number {
  const data =
    spec.prealloc === "falloc" || spec.prealloc === "full" ? (spec.allocationBytes ?? spec.capacity) : 0;
  if (spec.format === "raw") return data;
  if (spec.format === "vmdk") {
    // Header, descriptor, redundant and primary grain directories and tables (4 bytes per grain each).
    const grains = Math.ceil(spec.capacity / (spec.clusterSize || 64 * 1024));
    return 128 * 1024 + 2 * grains * 4;
  }
  return data + qcow2MetadataBytes(spec.capacity, spec.clusterSize || 64 * 1024, spec.prealloc !== "off");
}

/**
 * qcow2 metadata: header, refcount table, L1, refcount blocks, and (for any preallocation) every L2
 * table, with refcounts for every data cluster too (preallocation gives each one a host offset, as
 * qemu-img does). Counted with 16-bit refcounts and plain (not extended) L2 entries, the defaults.
 */
function qcow2MetadataBytes(capacity: number, cluster: number, preallocated: boolean): number {
  const dataClusters = Math.ceil(capacity / cluster);
  const l2Tables = Math.ceil(dataClusters / (cluster / 8));
  const l1Clusters = Math.ceil((l2Tables * 8) / cluster);
  const tables = 2 + l1Clusters + (preallocated ? l2Tables : 0);
  const fileClusters = tables + (preallocated ? dataClusters : 0);
  const refBlocks = Math.ceil((fileClusters * 2) / cluster) + 1;
  return (tables + refBlocks) * cluster;
}
