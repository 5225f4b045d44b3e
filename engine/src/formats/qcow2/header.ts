import { readU32, readU64, writeU32, writeU64 } from "../../binary/big-endian.js";
import { corrupt, unsupported } from "./errors.js";

/** "QFI\xfb" */
export const QCOW2_MAGIC = 0x514649fb;
export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 104;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** QEMU's implementation limits (block/qcow2.h). */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
export const MAX_BACKING_NAME = 1023;
/** Largest host offset an L1/L2 entry can hold (bits 9–55). */
export const MAX_HOST_OFFSET = 2 ** 56 - 1;

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTENDED_L2 = 1n << 4n;
const INCOMPAT_KNOWN =
  INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2;
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

/** Byte offsets of header fields that are updated in place with one small write. */
export const FIELD = {
  size: 24,
  l1Size: 36, // followed by l1_table_offset: 12 contiguous bytes
  refcountTable: 48, // offset + clusters: 12 contiguous bytes
  snapshots: 60, // nb_snapshots + snapshots_offset: 12 contiguous bytes
  incompatible: 72,
  compatible: 80,
  autoclear: 88,
} as const;

export interface HeaderExtension {
  type: number;
  data: Uint8Array;
}

export interface Qcow2Header {
  version: 2 | 3;
  /** Where the backing name is stored; recomputed on serialize. */
  backingFileOffset: number;
  backingFile: string | undefined;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  /** Header bytes from 104 up to header_length (compression type + fields we don't know), kept opaque. */
  headerTail: Uint8Array;
  /** Every extension in stored order, byte-exact (including ones we interpret). */
  extensions: HeaderExtension[];
}

export function clusterSizeOf(h: Qcow2Header): number {
  return 2 ** h.clusterBits;
}

export function compressionTypeOf(h: Qcow2Header): number {
  return h.headerTail.length > 0 ? (h.headerTail[0] ?? 0) : 0;
}

export function findExtension(h: Qcow2Header, type: number): HeaderExtension | undefined {
  return h.extensions.find((e) => e.type === type);
}

export function backingFormatOf(h: Qcow2Header): string | undefined {
  const ext = findExtension(h, EXT_BACKING_FORMAT);
  return ext ? Buffer.from(ext.data).toString("latin1") : undefined;
}

/** Returns a copy with the backing-format extension set (or removed), keeping other extensions in place. */
export function withBackingFormat(h: Qcow2Header, format: string | undefined): Qcow2Header {
  const extensions = h.extensions.filter((e) => e.type !== EXT_BACKING_FORMAT);
  if (format !== undefined)
    extensions.unshift({ type: EXT_BACKING_FORMAT, data: Uint8Array.from(Buffer.from(format, "latin1")) });
  return { ...h, extensions };
}

/** Names from the feature name table, for error messages only (bounded, untrusted text). */
export function featureName(h: Qcow2Header, kind: 0 | 1 | 2, bit: number): string | undefined {
  const ext = findExtension(h, EXT_FEATURE_TABLE);
  if (!ext) return undefined;
  for (let at = 0; at + 48 <= ext.data.length; at += 48) {
    if (ext.data[at] === kind && ext.data[at + 1] === bit) {
      const raw = Buffer.from(ext.data.subarray(at + 2, at + 48));
      const end = raw.indexOf(0);
      return raw
        .subarray(0, end < 0 ? 46 : end)
        .toString("latin1")
        .replace(/[^\x20-\x7e]/g, "?");
    }
  }
  return undefined;
}

/** Reads cluster_bits from the first bytes so the caller knows how much of cluster 0 to read. */
export function peekClusterBits(head: Uint8Array): number {
  if (head.length < V2_HEADER_LENGTH) throw corrupt("QCOW2_TRUNCATED", "file is shorter than a qcow2 header");
  if (readU32(head, 0) !== QCOW2_MAGIC) throw corrupt("QCOW2_BAD_MAGIC", "not a qcow2 image (bad magic)");
  const version = readU32(head, 4);
  if (version !== 2 && version !== 3) {
    throw unsupported("QCOW2_UNSUPPORTED_VERSION", `unsupported qcow2 version ${version}`);
  }
  const clusterBits = readU32(head, 20);
  if (clusterBits < MIN_CLUSTER_BITS)
    throw corrupt("QCOW2_BAD_CLUSTER_BITS", `invalid cluster_bits ${clusterBits}`);
  if (clusterBits > MAX_CLUSTER_BITS) {
    throw unsupported("QCOW2_BAD_CLUSTER_BITS", `unsupported cluster size (cluster_bits ${clusterBits})`);
  }
  return clusterBits;
}

function u64Field(bytes: Uint8Array, at: number, what: string): number {
  const v = readU64(bytes, at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt("QCOW2_VALUE_OUT_OF_RANGE", `${what} out of range`);
  return Number(v);
}

/** QEMU's qcow2_validate_table: bounded size, cluster-aligned offset, and (our addition) inside the file. */
function validateTable(
  what: string,
  offset: number,
  entries: number,
  entryBytes: number,
  maxBytes: number,
  clusterSize: number,
  fileSize: number,
  tooLargeReason: string,
): void {
  if (entries > maxBytes / entryBytes)
    throw unsupported(tooLargeReason, `${what} too large (${entries} entries)`);
  if (offset % clusterSize !== 0)
    throw corrupt("QCOW2_TABLE_OFFSET_INVALID", `${what} offset ${offset} is not cluster-aligned`);
  if (entries > 0 && (offset === 0 || offset + entries * entryBytes > fileSize)) {
    throw corrupt("QCOW2_TABLE_OFFSET_INVALID", `${what} at ${offset} lies outside the file`);
  }
}

/**
 * Parses and validates the header in `cluster0` (the first cluster, zero-padded past end of file),
 * in the order QEMU's qcow2_do_open checks it. Throws CORRUPT/UNSUPPORTED with a specific reason.
 */
export function parseHeader(cluster0: Uint8Array, fileSize: number): Qcow2Header {
  const clusterBits = peekClusterBits(cluster0);
  const clusterSize = 2 ** clusterBits;
  if (cluster0.length < Math.min(clusterSize, V3_HEADER_LENGTH))
    throw corrupt("QCOW2_TRUNCATED", "header truncated");
  const version = readU32(cluster0, 4) as 2 | 3;

  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let headerLength = V2_HEADER_LENGTH;
  let headerTail: Uint8Array = new Uint8Array(0);
  if (version === 3) {
    incompatibleFeatures = readU64(cluster0, 72);
    compatibleFeatures = readU64(cluster0, 80);
    autoclearFeatures = readU64(cluster0, 88);
    refcountOrder = readU32(cluster0, 96);
    headerLength = readU32(cluster0, 100);
    if (headerLength < V3_HEADER_LENGTH)
      throw corrupt("QCOW2_BAD_HEADER_LENGTH", `header_length ${headerLength} too short`);
    if (headerLength > clusterSize) throw corrupt("QCOW2_BAD_HEADER_LENGTH", "header exceeds cluster size");
    if (headerLength % 8 !== 0)
      throw corrupt("QCOW2_BAD_HEADER_LENGTH", "header_length is not a multiple of 8");
    headerTail = Uint8Array.from(cluster0.subarray(V3_HEADER_LENGTH, headerLength));
  }

  const backingFileOffset = u64Field(cluster0, 8, "backing_file_offset");
  const backingFileSize = readU32(cluster0, 16);
  if (backingFileOffset > clusterSize)
    throw corrupt("QCOW2_BAD_BACKING_OFFSET", "invalid backing file offset");

  const compressionType = headerTail.length > 0 ? (headerTail[0] ?? 0) : 0;
  if (compressionType > 1)
    throw unsupported("QCOW2_UNKNOWN_COMPRESSION_TYPE", `unknown compression type ${compressionType}`);
  if ((compressionType !== 0) !== ((incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n)) {
    throw corrupt(
      "QCOW2_COMPRESSION_TYPE_MISMATCH",
      "compression type and its incompatible feature bit disagree",
    );
  }

  const size = readU64(cluster0, 24);
  const cryptMethod = readU32(cluster0, 32);
  const l1Size = readU32(cluster0, 36);
  const l1TableOffset = u64Field(cluster0, 40, "l1_table_offset");
  const refcountTableOffset = u64Field(cluster0, 48, "refcount_table_offset");
  const refcountTableClusters = readU32(cluster0, 56);
  const nbSnapshots = readU32(cluster0, 60);
  const snapshotsOffset = u64Field(cluster0, 64, "snapshots_offset");

  const extEnd = backingFileOffset !== 0 ? backingFileOffset : clusterSize;
  const extensions = parseExtensions(cluster0, headerLength, Math.min(extEnd, cluster0.length));

  const header: Qcow2Header = {
    version,
    backingFileOffset,
    backingFile: undefined,
    clusterBits,
    size: 0,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    headerTail,
    extensions,
  };

  const unknown = incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const bits: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if ((unknown >> BigInt(bit)) & 1n) bits.push(featureName(header, 0, bit) ?? `bit ${bit}`);
    }
    throw unsupported(
      "QCOW2_UNKNOWN_INCOMPATIBLE_FEATURE",
      `unsupported incompatible features: ${bits.slice(0, 8).join(", ")}`,
    );
  }
  if (incompatibleFeatures & INCOMPAT_DATA_FILE || autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) {
    throw unsupported("QCOW2_EXTERNAL_DATA_FILE", "images with an external data file are not supported");
  }
  if (findExtension(header, EXT_DATA_FILE)) {
    throw unsupported("QCOW2_EXTERNAL_DATA_FILE", "images naming an external data file are not supported");
  }
  if (compressionType === 1) throw unsupported("QCOW2_ZSTD", "zstd compression is not supported");
  if (incompatibleFeatures & INCOMPAT_EXTENDED_L2 && clusterBits < 14) {
    throw corrupt("QCOW2_BAD_CLUSTER_BITS", "extended L2 entries need clusters of at least 16 KiB");
  }
  if (refcountOrder > 6) throw corrupt("QCOW2_BAD_REFCOUNT_ORDER", `invalid refcount_order ${refcountOrder}`);
  if (cryptMethod !== 0 || findExtension(header, EXT_CRYPTO)) {
    throw unsupported("QCOW2_ENCRYPTED", "encrypted images are not supported");
  }
  if (refcountTableClusters === 0)
    throw corrupt("QCOW2_NO_REFCOUNT_TABLE", "image does not contain a reference count table");

  validateTable(
    "refcount table",
    refcountTableOffset,
    refcountTableClusters * (clusterSize / 8),
    8,
    MAX_REFTABLE_BYTES,
    clusterSize,
    fileSize,
    "QCOW2_REFTABLE_TOO_LARGE",
  );
  if (nbSnapshots > MAX_SNAPSHOTS)
    throw unsupported("QCOW2_TOO_MANY_SNAPSHOTS", `too many snapshots (${nbSnapshots})`);
  if (
    snapshotsOffset % clusterSize !== 0 ||
    (nbSnapshots > 0 && (snapshotsOffset === 0 || snapshotsOffset >= fileSize))
  ) {
    throw corrupt("QCOW2_TABLE_OFFSET_INVALID", "invalid snapshot table offset");
  }
  validateTable(
    "active L1 table",
    l1TableOffset,
    l1Size,
    8,
    MAX_L1_BYTES,
    clusterSize,
    fileSize,
    "QCOW2_L1_TOO_LARGE",
  );

  if (size > BigInt(Number.MAX_SAFE_INTEGER))
    throw unsupported("QCOW2_IMAGE_TOO_BIG", "virtual size above 2^53 bytes");
  header.size = Number(size);
  const extendedL2 = (incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n;
  const l2Entries = clusterSize / (extendedL2 ? 16 : 8);
  const neededL1 = Math.ceil(header.size / (clusterSize * l2Entries));
  if (neededL1 > MAX_L1_BYTES / 8) throw unsupported("QCOW2_IMAGE_TOO_BIG", "image is too big");
  if (l1Size < neededL1) throw corrupt("QCOW2_L1_TOO_SMALL", "L1 table is too small for the virtual size");

  if (backingFileOffset !== 0) {
    if (backingFileSize > Math.min(MAX_BACKING_NAME, clusterSize - backingFileOffset)) {
      throw corrupt("QCOW2_BACKING_NAME_TOO_LONG", "backing file name too long");
    }
    header.backingFile = Buffer.from(
      cluster0.subarray(backingFileOffset, backingFileOffset + backingFileSize),
    ).toString("utf8");
  }
  return header;
}

function parseExtensions(cluster0: Uint8Array, start: number, end: number): HeaderExtension[] {
  const out: HeaderExtension[] = [];
  const seen = new Set<number>();
  let at = start;
  while (at + 8 <= end) {
    const type = readU32(cluster0, at);
    const len = readU32(cluster0, at + 4);
    at += 8;
    if (type === EXT_END) break;
    if (len > end - at)
      throw corrupt("QCOW2_HEADER_EXTENSION_TOO_LARGE", `header extension 0x${type.toString(16)} too large`);
    if (seen.has(type))
      throw corrupt("QCOW2_DUPLICATE_HEADER_EXTENSION", `header extension 0x${type.toString(16)} repeated`);
    seen.add(type);
    const data = Uint8Array.from(cluster0.subarray(at, at + len));
    if (type === EXT_BACKING_FORMAT && len >= 16) {
      throw corrupt("QCOW2_BACKING_FORMAT_TOO_LONG", "backing format name too long");
    }
    if (type === EXT_BITMAPS) validateBitmapsExtension(data);
    out.push({ type, data });
    at += Math.ceil(len / 8) * 8;
  }
  return out;
}

function validateBitmapsExtension(data: Uint8Array): void {
  if (data.length !== 24)
    throw corrupt("QCOW2_BAD_BITMAPS_EXTENSION", "bitmaps extension has the wrong size");
  const nb = readU32(data, 0);
  const reserved = readU32(data, 4);
  if (reserved !== 0 || nb === 0 || nb > 65535)
    throw corrupt("QCOW2_BAD_BITMAPS_EXTENSION", "invalid bitmaps extension");
  if (readU64(data, 8) > BigInt(1024 * 65535))
    throw corrupt("QCOW2_BAD_BITMAPS_EXTENSION", "bitmap directory too large");
}

/** Bytes the serialized header occupies (header, extensions, end marker, backing name). */
export function serializedHeaderLength(h: Qcow2Header): number {
  let n = h.version === 3 ? h.headerLength : V2_HEADER_LENGTH;
  for (const e of h.extensions) n += 8 + Math.ceil(e.data.length / 8) * 8;
  n += 8;
  if (h.backingFile !== undefined) n += Buffer.byteLength(h.backingFile, "utf8");
  return n;
}

/**
 * Serializes header + extensions + end marker + backing name, as QEMU lays them out. The backing
 * name offset/length are derived from the layout, so the result always parses back to `h`.
 */
export function serializeHeader(h: Qcow2Header): Uint8Array {
  const length = serializedHeaderLength(h);
  const out = Buffer.alloc(length);
  writeU32(out, 0, QCOW2_MAGIC);
  writeU32(out, 4, h.version);
  writeU32(out, 20, h.clusterBits);
  writeU64(out, 24, h.size);
  writeU32(out, 32, h.cryptMethod);
  writeU32(out, 36, h.l1Size);
  writeU64(out, 40, h.l1TableOffset);
  writeU64(out, 48, h.refcountTableOffset);
  writeU32(out, 56, h.refcountTableClusters);
  writeU32(out, 60, h.nbSnapshots);
  writeU64(out, 64, h.snapshotsOffset);
  let at = V2_HEADER_LENGTH;
  if (h.version === 3) {
    writeU64(out, 72, h.incompatibleFeatures);
    writeU64(out, 80, h.compatibleFeatures);
    writeU64(out, 88, h.autoclearFeatures);
    writeU32(out, 96, h.refcountOrder);
    writeU32(out, 100, h.headerLength);
    out.set(h.headerTail, V3_HEADER_LENGTH);
    at = h.headerLength;
  }
  for (const e of h.extensions) {
    writeU32(out, at, e.type);
    writeU32(out, at + 4, e.data.length);
    out.set(e.data, at + 8);
    at += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  at += 8; // end-of-extensions marker (already zero)
  if (h.backingFile !== undefined) {
    const name = Buffer.from(h.backingFile, "utf8");
    writeU64(out, 8, at);
    writeU32(out, 16, name.length);
    out.set(name, at);
    h.backingFileOffset = at;
  } else {
    h.backingFileOffset = 0;
  }
  return out;
}
