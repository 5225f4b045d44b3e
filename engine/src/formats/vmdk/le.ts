/** Little-endian field access for VMDK structures (kept local so this driver has no cross-module coupling). */

export function readU16(buf: Uint8Array, at: number): number {
  return buf[at]! | (buf[at + 1]! << 8);
}

export function readU32(buf: Uint8Array, at: number): number {
  return (buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16)) + buf[at + 3]! * 0x1000000;
}

export function readU64(buf: Uint8Array, at: number): bigint {
  return BigInt(readU32(buf, at)) | (BigInt(readU32(buf, at + 4)) << 32n);
}

export function writeU16(buf: Uint8Array, at: number, value: number): void {
  buf[at] = value & 0xff;
  buf[at + 1] = (value >>> 8) & 0xff;
}

export function writeU32(buf: Uint8Array, at: number, value: number): void {
  buf[at] = value & 0xff;
  buf[at + 1] = (value >>> 8) & 0xff;
  buf[at + 2] = (value >>> 16) & 0xff;
  buf[at + 3] = (value >>> 24) & 0xff;
}

export function writeU64(buf: Uint8Array, at: number, value: bigint | number): void {
  const v = BigInt(value);
  writeU32(buf, at, Number(v & 0xffffffffn));
  writeU32(buf, at + 4, Number((v >> 32n) & 0xffffffffn));
}

/** Decodes a run of little-endian u32 table entries (grain directory or grain table). */
export function readU32Table(buf: Uint8Array, count: number): Uint32Array {
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = readU32(buf, i * 4);
  return out;
}

export function encodeU32Table(values: ArrayLike<number>, byteLength = values.length * 4): Uint8Array {
  const out = new Uint8Array(byteLength);
  for (let i = 0; i < values.length; i++) writeU32(out, i * 4, values[i]!);
  return out;
}
