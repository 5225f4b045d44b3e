import { joinU64, splitNumber } from "../../binary/big-endian.js";
import { corrupt } from "./errors.js";
import { compressedOffsetBits } from "./layout.js";

/**
 * What one L2 entry (or, with extended L2, one subcluster) means — QEMU's QCow2SubclusterType.
 * - unallocated: defer to the backing file (zeros without one)
 * - unallocated-alloc: extended L2 only — host cluster exists, this subcluster still defers to backing
 * - zero-plain / zero-alloc: reads as zeros, without / with a (preallocated) host cluster
 * - normal: data at hostOffset
 * - compressed: deflated data somewhere in the file
 */
export type ClusterType =
  | "unallocated"
  | "unallocated-alloc"
  | "zero-plain"
  | "zero-alloc"
  | "normal"
  | "compressed";

export interface ClassifiedEntry {
  type: ClusterType;
  /** Host cluster offset for normal/zero-alloc/unallocated-alloc; 0 otherwise. */
  hostOffset: number;
  /** COPIED flag: refcount is exactly 1, so the cluster may be written in place. */
  copied: boolean;
  /** Compressed clusters: byte offset and the byte length covered by the sector count. */
  compressed?: CompressedExtent;
}

const HI_COPIED = 0x8000_0000;
const HI_COMPRESSED = 0x4000_0000;
const HI_OFFSET_MASK = 0x00ff_ffff;
const LO_OFFSET_MASK = 0xffff_fe00;
const L2_HI_RESERVED = 0x3f00_0000; // bits 56–61
const L2_LO_RESERVED = 0x0000_01fe; // bits 1–8
const L1_HI_RESERVED = 0x7f00_0000; // bits 56–62
const L1_LO_RESERVED = 0x0000_01ff; // bits 0–8

export interface CompressedExtent {
  offset: number;
  length: number;
}

export interface EntryContext {
  version: 2 | 3;
  clusterBits: number;
  extendedL2: boolean;
}

/** Host offset stored in bits 9–55 of a standard entry. */
export function entryOffset(hi: number, lo: number): number {
  return joinU64(hi & HI_OFFSET_MASK, lo & LO_OFFSET_MASK);
}

/** Classifies an L1 entry: the L2 table offset (0 = none) and its COPIED flag. */
export function classifyL1Entry(
  hi: number,
  lo: number,
  clusterSize: number,
  l1Index: number,
): { l2Offset: number; copied: boolean } {
  if ((hi & L1_HI_RESERVED) !== 0 || (lo & L1_LO_RESERVED) !== 0) {
    throw corrupt("QCOW2_L1_ENTRY_INVALID", `L1 entry ${l1Index} has reserved bits set`);
  }
  const l2Offset = entryOffset(hi, lo);
  if (l2Offset % clusterSize !== 0) {
    throw corrupt("QCOW2_L2_OFFSET_UNALIGNED", `L2 table offset ${l2Offset} unaligned (L1 index ${l1Index})`);
  }
  return { l2Offset, copied: (hi & HI_COPIED) !== 0 };
}

/**
 * Classifies a standard L2 entry (and, with extended L2, subcluster `subcluster` of it using the
 * bitmap halves: allocMask = bits 0–31, zeroMask = bits 32–63). Reserved bits, unaligned offsets and
 * contradictory states are corruption.
 */
export function classifyL2Entry(
  ctx: EntryContext,
  hi: number,
  lo: number,
  allocMask = 0,
  zeroMask = 0,
  subcluster = 0,
): ClassifiedEntry {
  const copied = (hi & HI_COPIED) !== 0;
  if ((hi & HI_COMPRESSED) !== 0) {
    if (copied) throw corrupt("QCOW2_L2_ENTRY_INVALID", "compressed cluster entry has the COPIED flag set");
    if (ctx.extendedL2 && (allocMask !== 0 || zeroMask !== 0)) {
      throw corrupt("QCOW2_L2_ENTRY_INVALID", "compressed cluster entry has a subcluster bitmap");
    }
    const descriptor = (BigInt(hi & 0x3fff_ffff) << 32n) | BigInt(lo >>> 0);
    const x = BigInt(compressedOffsetBits(ctx.clusterBits));
    const offset = descriptor & ((1n << x) - 1n);
    const extraSectors = descriptor >> x;
    if (offset > BigInt(Number.MAX_SAFE_INTEGER))
      throw corrupt("QCOW2_COMPRESSED_OUT_OF_RANGE", "compressed offset out of range");
    const start = Number(offset);
    const length = (Number(extraSectors) + 1) * 512 - (start % 512);
    return { type: "compressed", hostOffset: 0, copied: false, compressed: { offset: start, length } };
  }
  if ((hi & L2_HI_RESERVED) !== 0 || (lo & L2_LO_RESERVED) !== 0) {
    throw corrupt("QCOW2_L2_ENTRY_INVALID", "L2 entry has reserved bits set");
  }
  const zeroFlag = (lo & 1) !== 0;
  const hostOffset = entryOffset(hi, lo);
  const clusterSize = 2 ** ctx.clusterBits;
  if (hostOffset % clusterSize !== 0) {
    throw corrupt("QCOW2_CLUSTER_OFFSET_UNALIGNED", `cluster allocation offset ${hostOffset} unaligned`);
  }
  if (hostOffset === 0 && copied)
    throw corrupt("QCOW2_L2_ENTRY_INVALID", "L2 entry with offset 0 has the COPIED flag set");

  if (ctx.extendedL2) {
    if (zeroFlag) throw corrupt("QCOW2_L2_ENTRY_INVALID", "zero flag set in an extended L2 entry");
    const alloc = ((allocMask >>> subcluster) & 1) !== 0;
    const zero = ((zeroMask >>> subcluster) & 1) !== 0;
    if (alloc && zero) throw corrupt("QCOW2_L2_BITMAP_INVALID", "subcluster both allocated and zero");
    if (hostOffset === 0) {
      if (alloc || allocMask !== 0)
        throw corrupt("QCOW2_L2_BITMAP_INVALID", "allocated subcluster without a host cluster");
      return { type: zero ? "zero-plain" : "unallocated", hostOffset: 0, copied };
    }
    return { type: alloc ? "normal" : zero ? "zero-alloc" : "unallocated-alloc", hostOffset, copied };
  }

  if (zeroFlag) {
    if (ctx.version === 2) throw corrupt("QCOW2_ZERO_IN_V2", "zero cluster entry found in pre-v3 image");
    return { type: hostOffset === 0 ? "zero-plain" : "zero-alloc", hostOffset, copied };
  }
  return { type: hostOffset === 0 ? "unallocated" : "normal", hostOffset, copied };
}

/** Encodes a standard entry: host offset (cluster-aligned), zero flag, COPIED flag. */
export function encodeStandardEntry(
  hostOffset: number,
  zero: boolean,
  copied: boolean,
): { hi: number; lo: number } {
  const { hi, lo } = splitNumber(hostOffset);
  return { hi: (hi | (copied ? HI_COPIED : 0)) >>> 0, lo: (lo | (zero ? 1 : 0)) >>> 0 };
}

/** Encodes an L1 entry pointing at an L2 table. */
export function encodeL1Entry(l2Offset: number, copied: boolean): { hi: number; lo: number } {
  return encodeStandardEntry(l2Offset, false, copied);
}

/** Encodes a compressed descriptor (used by tests and by check's corpus builder). */
export function encodeCompressedEntry(
  clusterBits: number,
  offset: number,
  extraSectors: number,
): { hi: number; lo: number } {
  const x = BigInt(compressedOffsetBits(clusterBits));
  const v = (1n << 62n) | (BigInt(extraSectors) << x) | BigInt(offset);
  return { hi: Number(v >> 32n) >>> 0, lo: Number(v & 0xffff_ffffn) >>> 0 };
}
