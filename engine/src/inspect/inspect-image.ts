import type { BlockImage } from "../block-image.js";
import { mapExtents } from "../core/allocation-map.js";
import { EngineError, throwIfAborted } from "../errors.js";
import { driverFor } from "../formats/registry.js";
import type { HostFile } from "../host/host-file.js";
import type { FormatDetails, FormatName } from "../types.js";
import { asUploadError, rejectUpload } from "./errors.js";
import { checkIdentity } from "./identity.js";
import { checkQcow2Upload, qcow2ClusterBits, qcow2DeclaredSize } from "./qcow2-rules.js";
import { readOnlyView } from "./read-only-view.js";
import { detectSignatures } from "./signatures.js";
import { checkVmdkUpload, vmdkDeclaredSize } from "./vmdk-rules.js";

export interface InspectLimits {
  /** Largest guest size an upload may declare (the tenant's quota), in bytes. */
  maxVirtualSize: number;
}

export interface InspectOptions {
  signal?: AbortSignal;
}

/** The verdict on an upload that may be stored. */
export interface Inspection {
  format: FormatName;
  virtualSize: number;
  /** Bytes of the uploaded file. */
  fileSize: number;
  details: FormatDetails;
}

/**
 * Bytes read from the start of the file: the largest qcow2 cluster 0 (2 MiB) also covers the VMDK
 * header + embedded descriptor (at most 1 MiB) and the ISO/UDF descriptors at 32–36 KiB.
 */
const HEAD_BYTES = 2 * 1024 * 1024;
/** Bytes read from the end: a streamOptimized footer (1536 bytes) before a partial last sector. */
const TAIL_BYTES = 4096;

const FORMATS: readonly FormatName[] = ["raw", "qcow2", "vmdk"];

async function readRegion(file: HostFile, offset: number, length: number): Promise<Uint8Array> {
  const bytes = new Uint8Array(length);
  if (length > 0) await file.readFull(offset, bytes);
  return bytes;
}

function checkQuota(declaredSize: bigint, limits: InspectLimits): void {
  if (declaredSize > BigInt(limits.maxVirtualSize)) {
    throw new EngineError(
      "NO_SPACE",
      `import: virtual size ${declaredSize} exceeds the quota of ${limits.maxVirtualSize} bytes`,
      {
        reason: "VIRTUAL_SIZE_OVER_QUOTA",
        metadata: { virtualSize: declaredSize.toString(), maxVirtualSize: String(limits.maxVirtualSize) },
      },
    );
  }
}

/**
 * Walks all metadata the way a reader of the stored volume eventually would — every L1/L2 or grain
 * table entry via the allocation map, then the format's consistency check (refcounts, overlaps) — so
 * table corruption is refused now rather than discovered by a guest later. Leaks are harmless (QEMU's
 * `check` exit code 3) and accepted.
 */
async function walkMetadata(image: BlockImage, signal: AbortSignal | undefined): Promise<void> {
  for await (const _extent of mapExtents(image, signal === undefined ? {} : { signal })) {
    // Each extent is produced from validated table entries; reaching the end is the check.
  }
  throwIfAborted(signal);
  const result = await image.check({ repair: "none", ...(signal === undefined ? {} : { signal }) });
  if (result.corruptions > 0 || result.checkErrors > 0) {
    throw rejectUpload(
      "IMPORT_CORRUPT_METADATA",
      `${image.format} metadata is inconsistent (${result.corruptions} corruption(s), ${result.checkErrors} check error(s))`,
      { corruptions: String(result.corruptions), checkErrors: String(result.checkErrors) },
    );
  }
}

/**
 * Decides whether an uploaded staging file may be stored as `declared` (reliability §0 rules 1–4, with
 * OpenStack's format_inspector as the model):
 * 1. content signatures: exactly the declared format, no polyglot, no qcow2/vmdk/other container
 *    posing as raw;
 * 2. the declared virtual size against the quota (NO_SPACE, before any table is trusted or read);
 * 3. the format's upload rules on its header (nothing that names another file, no dirty/corrupt
 *    state, the driver's own validation);
 * 4. an actual read-only open with the driver (no backing) and a walk of all metadata.
 *
 * Only `file` is ever read — through a read-only view, so nothing here can write to it either.
 * Content problems are INVALID_ARGUMENT with a specific reason; cancellation and host I/O errors pass
 * through. Time is bounded by the file's own metadata; run it under inspectInSandbox for hard limits.
 */
export async function inspectImage(
  file: HostFile,
  declared: FormatName,
  limits: InspectLimits,
  opts: InspectOptions = {},
): Promise<Inspection> {
  if (!FORMATS.includes(declared)) {
    throw rejectUpload("IMPORT_FORMAT_UNSUPPORTED", `format ${String(declared)} cannot be imported`);
  }
  if (!Number.isSafeInteger(limits.maxVirtualSize) || limits.maxVirtualSize < 0) {
    throw new EngineError("INVALID_ARGUMENT", "maxVirtualSize must be a non-negative integer", {
      reason: "BAD_LIMITS",
    });
  }
  const { signal } = opts;
  const view = readOnlyView(file);
  try {
    throwIfAborted(signal);
    const fileSize = await view.size();
    const head = await readRegion(view, 0, Math.min(fileSize, HEAD_BYTES));
    const tailLength = Math.min(fileSize, TAIL_BYTES);
    const tail = await readRegion(view, fileSize - tailLength, tailLength);
    checkIdentity(declared, detectSignatures(head, fileSize));

    if (declared === "raw") {
      checkQuota(BigInt(fileSize), limits);
    } else if (declared === "qcow2") {
      const clusterBits = qcow2ClusterBits(head);
      checkQuota(qcow2DeclaredSize(head), limits);
      const cluster0 = new Uint8Array(2 ** clusterBits);
      cluster0.set(head.subarray(0, cluster0.length));
      checkQcow2Upload(cluster0, fileSize);
    } else {
      const size = vmdkDeclaredSize(head, fileSize, tail);
      if (size !== undefined) checkQuota(size, limits);
      checkVmdkUpload(head, fileSize, tail);
    }
    throwIfAborted(signal);

    const image = await driverFor(declared).open(view, { readOnly: true, allowMissingBacking: false });
    try {
      // The header's size was checked; the opened image's size is what will be stored.
      checkQuota(BigInt(image.virtualSize), limits);
      if (declared !== "raw") await walkMetadata(image, signal);
      return { format: declared, virtualSize: image.virtualSize, fileSize, details: image.details() };
    } finally {
      await image.close().catch(() => undefined);
    }
  } catch (err) {
    throw asUploadError(err);
  }
}
