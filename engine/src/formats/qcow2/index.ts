import type { BlockDriver } from "../../block-image.js";
import { createQcow2, openQcow2, probeQcow2 } from "./open.js";

/**
 * The qcow2 format driver (QEMU's bdrv_qcow2): v2/v3, 512 B–2 MiB clusters, refcounts of 1–64 bits,
 * backing chains, zero / compressed / extended-L2 clusters, internal snapshots kept intact, lazy
 * refcounts, check and repair. Split by concern as QEMU's block/qcow2*.c:
 * - header.ts        header + extensions: parse, validate (typed reasons), serialize
 * - layout.ts        pure geometry (L1/L2/refcount indices)
 * - l2-entry.ts      pure L1/L2 entry classification and encoding
 * - refcount-entry.ts / refcount.ts / refcount-builder.ts   refcount widths, allocation, table growth, rebuild
 * - cache.ts / metadata.ts   write-back table caches and the one ordered flush (crash-safety rules)
 * - cluster.ts       the one lookup (getHostOffset), writes with COW, zeroing, preallocation, shrink
 * - compress.ts      compressed-cluster inflation; snapshot.ts snapshot table parsing
 * - check.ts         qemu-img check semantics: leaks vs corruptions, repair
 * - qcow2-image.ts   the BlockImage; open.ts   open/create
 */
export const qcow2Driver: BlockDriver = {
  format: "qcow2",
  probe: probeQcow2,
  create: createQcow2,
  open: openQcow2,
};

export { Qcow2Image } from "./qcow2-image.js";
