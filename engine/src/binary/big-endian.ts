/**
 * Big-endian field access over Node Buffers / Uint8Arrays. The DataView respects byteOffset, because
 * Buffers are often slices of a shared pool.
 */
export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export function readU8(bytes: Uint8Array, at: number): number {
  return view(bytes).getUint8(at);
}
export function readU16(bytes: Uint8Array, at: number): number {
  return view(bytes).getUint16(at);
}
export function readU32(bytes: Uint8Array, at: number): number {
  return view(bytes).getUint32(at);
}
export function readU64(bytes: Uint8Array, at: number): bigint {
  return view(bytes).getBigUint64(at);
}

export function writeU8(bytes: Uint8Array, at: number, value: number): void {
  view(bytes).setUint8(at, value);
}
export function writeU16(bytes: Uint8Array, at: number, value: number): void {
  view(bytes).setUint16(at, value);
}
export function writeU32(bytes: Uint8Array, at: number, value: number): void {
  view(bytes).setUint32(at, value);
}
export function writeU64(bytes: Uint8Array, at: number, value: bigint | number): void {
  view(bytes).setBigUint64(at, typeof value === "bigint" ? value : BigInt(value));
}

/**
 * A 64-bit table entry as two 32-bit halves. Table entries (L1/L2/refcount table) are hot, and the
 * halves let us test flag bits and extract offsets below 2^53 without BigInt arithmetic; JS bitwise
 * operators are only ever applied to one 32-bit half.
 */
export interface SplitU64 {
  hi: number;
  lo: number;
}

export function readSplitU64(dv: DataView, at: number): SplitU64 {
  return { hi: dv.getUint32(at), lo: dv.getUint32(at + 4) };
}

export function writeSplitU64(dv: DataView, at: number, hi: number, lo: number): void {
  dv.setUint32(at, hi >>> 0);
  dv.setUint32(at + 4, lo >>> 0);
}

const TWO_POW_32 = 0x1_0000_0000;

/** Combines halves into a number; callers mask the high half first so the result stays below 2^53. */
export function joinU64(hi: number, lo: number): number {
  return hi * TWO_POW_32 + (lo >>> 0);
}

/** Splits a non-negative safe integer into 32-bit halves. */
export function splitNumber(value: number): SplitU64 {
  return { hi: Math.floor(value / TWO_POW_32) >>> 0, lo: value >>> 0 };
}
