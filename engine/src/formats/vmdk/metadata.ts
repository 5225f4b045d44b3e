import {
  decodeDescriptorText,
  parseDescriptor,
  type VmdkDescriptor,
  type VmdkSubformat,
  validateEmbeddedDescriptor,
} from "./descriptor.js";
import { corrupt, invalidArgument, quoteImageText, unsupported } from "./errors.js";
import {
  GD_AT_END,
  HEADER_SIZE,
  hasVmdk4Magic,
  parseSparseHeader,
  type SparseHeader,
  type SparseLayout,
  validateSparseHeader,
} from "./header.js";
import { FOOTER_TAIL_SIZE, parseFooterTail } from "./markers.js";

/** Everything open needs from a file's metadata, after every check passed. */
export interface VmdkMetadata {
  layout: SparseLayout;
  descriptor: VmdkDescriptor;
  descriptorText: string;
  subformat: VmdkSubformat;
  /** Byte offset of the footer tail, when the real header is the footer (streamOptimized). */
  footerOffset: number | undefined;
}

/** Fails fast on anything that isn't a VMDK4 sparse extent, naming what it looks like instead. */
export function checkVmdkIdentity(head: Uint8Array, fileSize: number): void {
  if (fileSize < 4 || head.length < 4)
    throw corrupt("VMDK_TOO_SMALL", "file is too small to be a VMDK image");
  if (hasVmdk4Magic(head)) {
    if (fileSize < HEADER_SIZE) throw corrupt("VMDK_TRUNCATED", "file shorter than the VMDK header");
    return;
  }
  const magic = String.fromCharCode(head[0]!, head[1]!, head[2]!, head[3]!);
  if (magic === "COWD")
    throw unsupported("VMDK_UNSUPPORTED_VERSION", "VMDK3 (COWD) extents are not supported");
  if (looksLikeDescriptorText(head)) {
    throw unsupported(
      "VMDK_DESCRIPTOR_FILE",
      "text descriptor files (which reference other files) are not supported",
    );
  }
  throw corrupt("VMDK_BAD_MAGIC", "not a VMDK image (no KDMV magic)");
}

function looksLikeDescriptorText(head: Uint8Array): boolean {
  const sample = head.subarray(0, Math.min(head.length, 1024));
  const text = new TextDecoder("latin1").decode(sample);
  return (
    /^\s*#\s*Disk DescriptorFile/i.test(text) ||
    /^\s*(#[^\n]*\n\s*)*version\s*=/i.test(text) ||
    /createType\s*=/.test(text)
  );
}

/** Bytes of the file at [offset, offset + length): synchronous (inspection) or not (open). */
type Reader<R> = (offset: number, length: number) => R;

/**
 * Resolves the effective header (footer wins over a GD_AT_END header, as in QEMU), validates it, then
 * reads and validates the embedded descriptor. Written as a generator so one implementation serves both
 * the pure inspector (over buffered bytes) and the async open path.
 */
function* metadataSteps(fileSize: number): Generator<[number, number], VmdkMetadata, Uint8Array> {
  const head = yield [0, Math.min(fileSize, HEADER_SIZE)];
  checkVmdkIdentity(head, fileSize);
  let header: SparseHeader = parseSparseHeader(head);
  let footerOffset: number | undefined;
  if (header.gdOffset === GD_AT_END) {
    // QEMU reads the footer at the last whole sector − 1536.
    const end = Math.floor(fileSize / 512) * 512;
    if (end < HEADER_SIZE + FOOTER_TAIL_SIZE)
      throw corrupt("VMDK_BAD_FOOTER", "file too short for a streamOptimized footer");
    footerOffset = end - FOOTER_TAIL_SIZE;
    const footer = parseFooterTail(yield [footerOffset, FOOTER_TAIL_SIZE]);
    if (footer.gdOffset === GD_AT_END) throw corrupt("VMDK_BAD_FOOTER", "footer points to another footer");
    if (
      footer.version !== header.version ||
      footer.descOffset !== header.descOffset ||
      footer.descSize !== header.descSize
    ) {
      throw corrupt("VMDK_BAD_FOOTER", "footer disagrees with the header");
    }
    header = footer;
  }
  const layout = validateSparseHeader(header, fileSize);
  const descriptorText = decodeDescriptorText(yield [layout.descOffset, layout.descSize]);
  const descriptor = parseDescriptor(descriptorText);
  validateEmbeddedDescriptor(descriptor, layout.capacitySectors);
  const subformat: VmdkSubformat = layout.compressed ? "streamOptimized" : "monolithicSparse";
  if (descriptor.createType !== undefined && descriptor.createType !== subformat) {
    throw corrupt(
      "VMDK_BAD_DESCRIPTOR",
      `createType ${quoteImageText(descriptor.createType)} disagrees with the header`,
    );
  }
  return { layout, descriptor, descriptorText, subformat, footerOffset };
}

export async function readVmdkMetadata(
  read: Reader<Promise<Uint8Array>>,
  fileSize: number,
): Promise<VmdkMetadata> {
  const steps = metadataSteps(fileSize);
  let next = steps.next(new Uint8Array(0));
  while (!next.done) {
    const [offset, length] = next.value;
    next = steps.next(await read(offset, length));
  }
  return next.value;
}

export interface VmdkInspection {
  subformat: VmdkSubformat;
  virtualSize: number;
  grainSize: number;
  version: number;
  cid: number;
  zeroedGrain: boolean;
}

/**
 * Pure upload-inspector check over the first bytes of a file (at least header + descriptor, i.e. the
 * first 1 MiB or the whole file) and, for streamOptimized files, the last 1536 bytes. Never reads other
 * files; throws the same typed errors as open. INVALID_ARGUMENT (VMDK_NEED_MORE_BYTES) if a needed region
 * wasn't supplied.
 */
export function inspectVmdk(head: Uint8Array, fileSize: number, tail?: Uint8Array): VmdkInspection {
  const steps = metadataSteps(fileSize);
  const read: Reader<Uint8Array> = (offset, length) => {
    if (offset + length <= head.length) return head.subarray(offset, offset + length);
    if (tail !== undefined && offset >= fileSize - tail.length && offset + length <= fileSize) {
      const at = offset - (fileSize - tail.length);
      return tail.subarray(at, at + length);
    }
    throw invalidArgument(
      "VMDK_NEED_MORE_BYTES",
      `inspection needs bytes ${offset}..${offset + length} of the file`,
    );
  };
  let next = steps.next(new Uint8Array(0));
  while (!next.done) next = steps.next(read(...next.value));
  const m = next.value;
  return {
    subformat: m.subformat,
    virtualSize: m.layout.virtualSize,
    grainSize: m.layout.grainSize,
    version: m.layout.version,
    cid: m.descriptor.cid,
    zeroedGrain: m.layout.zeroedGrain,
  };
}
