import { readU64 } from "../binary/big-endian.js";
import {
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  parseHeader,
  peekClusterBits,
  type Qcow2Header,
} from "../formats/qcow2/header.js";
import { rejectUpload } from "./errors.js";

/**
 * Upload rules for qcow2 on top of the driver's own header validation (header.ts, which already refuses
 * external data files, unknown incompatible features, encryption, zstd, bad tables and sizes, in QEMU's
 * order). What the driver tolerates for a *stored* volume but an upload must not carry is refused here.
 */

/** Magic, version (qcow v1 is refused) and cluster size, from the first bytes; returns cluster_bits. */
export function qcow2ClusterBits(head: Uint8Array): number {
  return peekClusterBits(head);
}

/** The header's virtual size field, read before anything else is trusted so the quota applies first. */
export function qcow2DeclaredSize(head: Uint8Array): bigint {
  return readU64(head, 24);
}

/**
 * Validates cluster 0 for upload. A backing file is refused before the full parse: an upload must not
 * name any file, however well-formed the name is (CVE-2015-5163, CVE-2024-32498 class).
 */
export function checkQcow2Upload(cluster0: Uint8Array, fileSize: number): Qcow2Header {
  if (readU64(cluster0, 8) !== 0n) {
    throw rejectUpload("QCOW2_BACKING_FILE", "qcow2 image names a backing file");
  }
  const header = parseHeader(cluster0, fileSize);
  if ((header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n) {
    throw rejectUpload("QCOW2_CORRUPT_BIT", "qcow2 image is marked corrupt");
  }
  if ((header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n) {
    // Refcounts of a dirty image are stale until repaired, and repair means writing the upload.
    throw rejectUpload("QCOW2_DIRTY", "qcow2 image was not closed cleanly (dirty bit set)");
  }
  if (header.nbSnapshots > 0) {
    // Snapshot tables are more untrusted metadata that no volume API can reach (reliability §a E4).
    throw rejectUpload(
      "QCOW2_INTERNAL_SNAPSHOTS",
      `qcow2 image carries ${header.nbSnapshots} internal snapshot(s)`,
    );
  }
  return header;
}
