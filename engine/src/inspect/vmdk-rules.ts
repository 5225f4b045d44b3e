import { EngineError } from "../errors.js";
import { decodeDescriptorText, parseDescriptor } from "../formats/vmdk/descriptor.js";
import { quoteImageText } from "../formats/vmdk/errors.js";
import { GD_AT_END, hasVmdk4Magic, parseSparseHeader, SECTOR_SIZE } from "../formats/vmdk/header.js";
import { FOOTER_TAIL_SIZE, parseFooterTail } from "../formats/vmdk/markers.js";
import { inspectVmdk, type VmdkInspection } from "../formats/vmdk/metadata.js";
import { rejectUpload } from "./errors.js";

/**
 * Upload rules for vmdk. The driver's pure inspector (inspectVmdk) already refuses everything that would
 * make a reader open another file: createTypes other than monolithicSparse/streamOptimized, extents that
 * are not this file, parent links, zero-capacity headers deferring to a descriptor. Only a text
 * descriptor file needs extra handling, to report *why* it is refused.
 */

const ALLOWED_CREATE_TYPES = new Set(["monolithicSparse", "streamOptimized"]);

/**
 * Guest size the file claims (header capacity, or the footer's for a streamOptimized file whose header
 * defers to it), read before validation so the quota applies first. undefined for text descriptors.
 */
export function vmdkDeclaredSize(head: Uint8Array, fileSize: number, tail: Uint8Array): bigint | undefined {
  if (!hasVmdk4Magic(head) || head.length < SECTOR_SIZE) return undefined;
  const header = parseSparseHeader(head.subarray(0, SECTOR_SIZE));
  let capacity = header.capacity;
  if (header.gdOffset === GD_AT_END) {
    const footerAt = Math.floor(fileSize / SECTOR_SIZE) * SECTOR_SIZE - FOOTER_TAIL_SIZE;
    const at = footerAt - (fileSize - tail.length);
    if (at >= 0 && footerAt >= SECTOR_SIZE) {
      try {
        const footer = parseFooterTail(tail.subarray(at, at + FOOTER_TAIL_SIZE));
        if (footer.capacity > capacity) capacity = footer.capacity;
      } catch {
        // A bad footer is reported by the full check below; only the size matters here.
      }
    }
  }
  return capacity * BigInt(SECTOR_SIZE);
}

/**
 * A text descriptor file exists only to point at other files. It is always refused; a createType that
 * is not one of the two single-file subformats (monolithicFlat, twoGbMaxExtent*, vmfs, ...) gets its own
 * reason because it names the actual problem.
 */
function refuseDescriptorFile(head: Uint8Array): never {
  let createType: string | undefined;
  try {
    createType = parseDescriptor(decodeDescriptorText(head)).createType;
  } catch {
    createType = undefined;
  }
  if (createType !== undefined && !ALLOWED_CREATE_TYPES.has(createType)) {
    throw rejectUpload(
      "VMDK_UNSUPPORTED_CREATE_TYPE",
      `unsupported vmdk createType ${quoteImageText(createType)}`,
    );
  }
  throw rejectUpload(
    "VMDK_DESCRIPTOR_FILE",
    "vmdk descriptor files (which reference other files) are not accepted",
  );
}

/** Validates header, footer and embedded descriptor for upload; `head` holds at least header + descriptor. */
export function checkVmdkUpload(head: Uint8Array, fileSize: number, tail: Uint8Array): VmdkInspection {
  try {
    return inspectVmdk(head, fileSize, tail);
  } catch (err) {
    if (err instanceof EngineError && err.reason === "VMDK_DESCRIPTOR_FILE" && !hasVmdk4Magic(head)) {
      refuseDescriptorFile(head);
    }
    throw err;
  }
}
