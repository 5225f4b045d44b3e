import { corrupt } from "./errors.js";
import { hasVmdk4Magic, parseSparseHeader, SECTOR_SIZE, type SparseHeader } from "./header.js";
import { readU32, readU64, writeU32, writeU64 } from "./le.js";

/** streamOptimized metadata marker types (VDF 5.0). */
export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;

/** A grain marker is {u64 lba, u32 size} followed directly by the compressed bytes. */
export const GRAIN_MARKER_SIZE = 12;

/** A metadata marker sector: {u64 val (sectors that follow), u32 size = 0, u32 type}, padded to 512. */
export function metadataMarker(type: number, sectorsFollowing: number): Uint8Array {
  const out = new Uint8Array(SECTOR_SIZE);
  writeU64(out, 0, sectorsFollowing);
  writeU32(out, 8, 0);
  writeU32(out, 12, type);
  return out;
}

export interface MetadataMarker {
  value: bigint;
  size: number;
  type: number;
}

export function parseMetadataMarker(sector: Uint8Array): MetadataMarker {
  return { value: readU64(sector, 0), size: readU32(sector, 8), type: readU32(sector, 12) };
}

export function grainMarkerHeader(lba: number, compressedSize: number): Uint8Array {
  const out = new Uint8Array(GRAIN_MARKER_SIZE);
  writeU64(out, 0, lba);
  writeU32(out, 8, compressedSize);
  return out;
}

/** The fixed footer tail: footer marker, footer header, end-of-stream marker (QEMU reads it at EOF − 1536). */
export const FOOTER_TAIL_SIZE = 3 * SECTOR_SIZE;

/** Parses and checks the footer tail of a streamOptimized file, returning the header it carries. */
export function parseFooterTail(tail: Uint8Array): SparseHeader {
  if (tail.length !== FOOTER_TAIL_SIZE)
    throw corrupt("VMDK_BAD_FOOTER", "file too short for a streamOptimized footer");
  const footerMarker = parseMetadataMarker(tail.subarray(0, SECTOR_SIZE));
  const eos = parseMetadataMarker(tail.subarray(2 * SECTOR_SIZE));
  const headerSector = tail.subarray(SECTOR_SIZE, 2 * SECTOR_SIZE);
  if (
    footerMarker.size !== 0 ||
    footerMarker.type !== MARKER_FOOTER ||
    !hasVmdk4Magic(headerSector) ||
    eos.value !== 0n ||
    eos.size !== 0 ||
    eos.type !== MARKER_EOS
  ) {
    throw corrupt("VMDK_BAD_FOOTER", "invalid streamOptimized footer");
  }
  return parseSparseHeader(headerSector);
}
