/**
 * Reading and writing one refcount in a refcount block, for every width 1–64 bits. Widths below 8
 * pack several entries per byte, least-significant bits first (as QEMU does); wider ones are
 * big-endian integers. 64-bit values above 2^53 cannot be represented and count as corruption.
 */
import { corrupt } from "./errors.js";

export function maxRefcount(bits: number): number {
  return bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
}

export function getRefcountEntry(block: Uint8Array, index: number, bits: number): number {
  switch (bits) {
    case 1:
    case 2:
    case 4: {
      const perByte = 8 / bits;
      const byte = block[Math.floor(index / perByte)] ?? 0;
      return (byte >>> ((index % perByte) * bits)) & ((1 << bits) - 1);
    }
    case 8:
      return block[index] ?? 0;
    case 16:
      return ((block[index * 2] ?? 0) << 8) | (block[index * 2 + 1] ?? 0);
    case 32:
      return new DataView(block.buffer, block.byteOffset, block.byteLength).getUint32(index * 4);
    case 64: {
      const v = new DataView(block.buffer, block.byteOffset, block.byteLength).getBigUint64(index * 8);
      if (v > BigInt(Number.MAX_SAFE_INTEGER))
        throw corrupt("QCOW2_REFCOUNT_OUT_OF_RANGE", "refcount above 2^53");
      return Number(v);
    }
    default:
      throw new RangeError(`invalid refcount width ${bits}`);
  }
}

export function setRefcountEntry(block: Uint8Array, index: number, bits: number, value: number): void {
  if (value < 0 || value > maxRefcount(bits) || !Number.isInteger(value)) {
    throw new RangeError(`refcount ${value} does not fit in ${bits} bits`);
  }
  switch (bits) {
    case 1:
    case 2:
    case 4: {
      const perByte = 8 / bits;
      const at = Math.floor(index / perByte);
      const shift = (index % perByte) * bits;
      const mask = ((1 << bits) - 1) << shift;
      block[at] = ((block[at] ?? 0) & ~mask) | (value << shift);
      return;
    }
    case 8:
      block[index] = value;
      return;
    case 16:
      block[index * 2] = value >>> 8;
      block[index * 2 + 1] = value & 0xff;
      return;
    case 32:
      new DataView(block.buffer, block.byteOffset, block.byteLength).setUint32(index * 4, value);
      return;
    case 64:
      new DataView(block.buffer, block.byteOffset, block.byteLength).setBigUint64(index * 8, BigInt(value));
      return;
    default:
      throw new RangeError(`invalid refcount width ${bits}`);
  }
}

/**
 * Sets the refcounts of entries [from, from + count) from 0 to 1, stopping at the first that is not 0;
 * returns how many it set. The common 16-bit width takes byte stores after one range check: claiming the
 * clusters of a multi-gigabyte preallocation goes through here tens of thousands of times.
 */
export function claimZeroEntries(block: Uint8Array, from: number, count: number, bits: number): number {
  if (bits !== 16) {
    let k = 0;
    while (k < count && getRefcountEntry(block, from + k, bits) === 0) {
      setRefcountEntry(block, from + k, bits, 1);
      k++;
    }
    return k;
  }
  if (!Number.isInteger(from) || !Number.isInteger(count) || from < 0 || (from + count) * 2 > block.length)
    throw new RangeError(`refcount entries ${from}+${count} are outside the block`);
  let k = 0;
  for (; k < count; k++) {
    const at = (from + k) * 2;
    if (block[at] !== 0 || block[at + 1] !== 0) break;
    block[at + 1] = 1;
  }
  return k;
}
