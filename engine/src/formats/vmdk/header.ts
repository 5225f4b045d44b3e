import { corrupt, unsupported } from "./errors.js";
import { readU16, readU32, readU64, writeU16, writeU32, writeU64 } from "./le.js";

export const SECTOR_SIZE = 512;
export const HEADER_SIZE = 512;

export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_REDUNDANT_GD = 1 << 1;
export const FLAG_ZEROED_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;

export const COMPRESSION_NONE = 0;
export const COMPRESSION_DEFLATE = 1;

/** gd_offset value meaning "the real header is the footer near the end of the file" (streamOptimized). */
export const GD_AT_END = 0xffffffffffffffffn;

/** A grain table entry of 1 means "reads as zeros" when the zeroed-grain flag is set (VDF 5.0). */
export const GTE_ZEROED = 1;

/** QEMU's limits (block/vmdk.c): larger values only come from corrupt or hostile files. */
export const MAX_GTES_PER_GT = 512;
export const MAX_GRAIN_SECTORS = 0x200000;
export const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** Embedded descriptors are read whole; QEMU caps the descriptor read at 1 MiB − 1. */
export const MAX_DESCRIPTOR_BYTES = 1024 * 1024 - 1;
/** Grain table entries are u32 sector numbers, so nothing can be allocated past 2^32 sectors. */
export const MAX_EXTENT_SECTORS = 2 ** 32;

const MAGIC = [0x4b, 0x44, 0x4d, 0x56]; // "KDMV"
const CHECK_BYTES = [0x0a, 0x20, 0x0d, 0x0a]; // "\n \r\n": detects line-ending conversion in transit

/** The on-disk VMDK4 sparse extent header, fields as stored (sectors, not bytes). */
export interface SparseHeader {
  version: number;
  flags: number;
  capacity: bigint;
  granularity: bigint;
  descOffset: bigint;
  descSize: bigint;
  numGtesPerGt: number;
  rgdOffset: bigint;
  gdOffset: bigint;
  grainOffset: bigint;
  checkBytesIntact: boolean;
  compressAlgorithm: number;
}

export function hasVmdk4Magic(buf: Uint8Array): boolean {
  return buf.length >= 4 && MAGIC.every((b, i) => buf[i] === b);
}

export function parseSparseHeader(sector: Uint8Array): SparseHeader {
  if (sector.length < 80 || !hasVmdk4Magic(sector))
    throw corrupt("VMDK_BAD_MAGIC", "not a VMDK4 sparse extent (no KDMV magic)");
  return {
    version: readU32(sector, 4),
    flags: readU32(sector, 8),
    capacity: readU64(sector, 12),
    granularity: readU64(sector, 20),
    descOffset: readU64(sector, 28),
    descSize: readU64(sector, 36),
    numGtesPerGt: readU32(sector, 44),
    rgdOffset: readU64(sector, 48),
    gdOffset: readU64(sector, 56),
    grainOffset: readU64(sector, 64),
    checkBytesIntact: CHECK_BYTES.every((b, i) => sector[73 + i] === b),
    compressAlgorithm: readU16(sector, 77),
  };
}

export function serializeSparseHeader(h: Omit<SparseHeader, "checkBytesIntact">): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE);
  out.set(MAGIC, 0);
  writeU32(out, 4, h.version);
  writeU32(out, 8, h.flags);
  writeU64(out, 12, h.capacity);
  writeU64(out, 20, h.granularity);
  writeU64(out, 28, h.descOffset);
  writeU64(out, 36, h.descSize);
  writeU32(out, 44, h.numGtesPerGt);
  writeU64(out, 48, h.rgdOffset);
  writeU64(out, 56, h.gdOffset);
  writeU64(out, 64, h.grainOffset);
  out.set(CHECK_BYTES, 73);
  writeU16(out, 77, h.compressAlgorithm);
  return out;
}

/** A header that passed validation, converted to byte offsets and sizes the driver can use directly. */
export interface SparseLayout {
  version: number;
  flags: number;
  capacitySectors: number;
  virtualSize: number;
  grainSectors: number;
  grainSize: number;
  gtesPerGt: number;
  /** Guest bytes one grain table covers. */
  gtCoverage: number;
  gdEntries: number;
  gdOffset: number;
  /** Byte offset of the redundant grain directory, when the header says there is one. */
  rgdOffset: number | undefined;
  grainOffset: number;
  descOffset: number;
  descSize: number;
  compressed: boolean;
  zeroedGrain: boolean;
  /** Version 3 without compression may carry changed-block tracking we don't maintain (QEMU: read-only). */
  forceReadOnly: boolean;
}

function isPowerOfTwo(n: bigint): boolean {
  return n > 0n && (n & (n - 1n)) === 0n;
}

function regionFits(startSector: bigint, bytes: bigint, fileSize: number): boolean {
  return startSector > 0n && startSector * 512n + bytes <= BigInt(fileSize);
}

/**
 * Validates a (footer-resolved) header against the file size, in QEMU's order where QEMU checks the
 * same thing, and adds the bounds QEMU checks only lazily (every table must lie inside the file).
 */
export function validateSparseHeader(h: SparseHeader, fileSize: number): SparseLayout {
  if (h.version < 1 || h.version > 3) {
    throw unsupported("VMDK_UNSUPPORTED_VERSION", `unsupported VMDK version ${h.version}`);
  }
  if (h.flags & FLAG_NL_DETECT && !h.checkBytesIntact) {
    throw corrupt("VMDK_BAD_CHECK_BYTES", "header check bytes damaged (file transferred in text mode?)");
  }
  if (h.compressAlgorithm !== COMPRESSION_NONE && h.compressAlgorithm !== COMPRESSION_DEFLATE) {
    throw unsupported(
      "VMDK_UNSUPPORTED_COMPRESSION",
      `unsupported compression algorithm ${h.compressAlgorithm}`,
    );
  }
  const compressed = h.compressAlgorithm === COMPRESSION_DEFLATE;
  if (compressed && !(h.flags & FLAG_MARKERS)) {
    throw unsupported("VMDK_UNSUPPORTED_FLAGS", "compressed grains without grain markers are not supported");
  }
  if (h.numGtesPerGt > MAX_GTES_PER_GT) {
    throw corrupt("VMDK_GT_TOO_LARGE", `grain table of ${h.numGtesPerGt} entries (max ${MAX_GTES_PER_GT})`);
  }
  if (h.numGtesPerGt === 0) throw corrupt("VMDK_GT_TOO_LARGE", "grain tables have no entries");
  if (h.granularity === 0n || h.granularity > BigInt(MAX_GRAIN_SECTORS) || !isPowerOfTwo(h.granularity)) {
    throw corrupt("VMDK_BAD_GRANULARITY", `invalid granularity ${h.granularity} sectors`);
  }
  if (h.capacity === 0n) {
    // QEMU then treats the embedded descriptor as a descriptor file that may name other extents.
    throw unsupported("VMDK_DESCRIPTOR_FILE", "zero-capacity extent that defers to its descriptor");
  }
  if (h.capacity * 512n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw corrupt("VMDK_BAD_CAPACITY", `capacity of ${h.capacity} sectors is out of range`);
  }
  const gtCoverageSectors = BigInt(h.numGtesPerGt) * h.granularity;
  const gdEntries = (h.capacity + gtCoverageSectors - 1n) / gtCoverageSectors;
  if (gdEntries > BigInt(MAX_GD_ENTRIES))
    throw corrupt("VMDK_GD_TOO_LARGE", `grain directory of ${gdEntries} entries`);
  if (h.grainOffset * 512n > BigInt(fileSize)) {
    throw corrupt("VMDK_TRUNCATED", `file truncated: expected at least ${h.grainOffset * 512n} bytes`);
  }
  if (h.descOffset !== 1n || h.descSize === 0n || h.descSize * 512n > BigInt(MAX_DESCRIPTOR_BYTES + 1)) {
    throw corrupt("VMDK_BAD_DESCRIPTOR", "embedded descriptor must start at sector 1 and be at most 1 MiB");
  }
  if (!regionFits(h.descOffset, h.descSize * 512n, fileSize)) {
    throw corrupt("VMDK_TABLE_OUT_OF_RANGE", "embedded descriptor lies outside the file");
  }
  const gdBytes = gdEntries * 4n;
  if (!regionFits(h.gdOffset, gdBytes, fileSize)) {
    throw corrupt("VMDK_TABLE_OUT_OF_RANGE", "grain directory lies outside the file");
  }
  // Like QEMU, a redundant-GD flag with offset 0 means there is none.
  const hasRgd = (h.flags & FLAG_REDUNDANT_GD) !== 0 && h.rgdOffset !== 0n;
  if (hasRgd && !regionFits(h.rgdOffset, gdBytes, fileSize)) {
    throw corrupt("VMDK_TABLE_OUT_OF_RANGE", "redundant grain directory lies outside the file");
  }
  const grainSectors = Number(h.granularity);
  return {
    version: h.version,
    flags: h.flags,
    capacitySectors: Number(h.capacity),
    virtualSize: Number(h.capacity) * SECTOR_SIZE,
    grainSectors,
    grainSize: grainSectors * SECTOR_SIZE,
    gtesPerGt: h.numGtesPerGt,
    gtCoverage: Number(gtCoverageSectors) * SECTOR_SIZE,
    gdEntries: Number(gdEntries),
    gdOffset: Number(h.gdOffset) * SECTOR_SIZE,
    rgdOffset: hasRgd ? Number(h.rgdOffset) * SECTOR_SIZE : undefined,
    grainOffset: Number(h.grainOffset) * SECTOR_SIZE,
    descOffset: Number(h.descOffset) * SECTOR_SIZE,
    descSize: Number(h.descSize) * SECTOR_SIZE,
    compressed,
    zeroedGrain: (h.flags & FLAG_ZEROED_GRAIN) !== 0,
    forceReadOnly: h.version === 3 && !compressed,
  };
}
