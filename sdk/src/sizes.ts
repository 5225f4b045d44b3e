/** 1024 bytes. */
export const KiB = 1024;
/** 1024 KiB. */
export const MiB = 1024 * KiB;
/** 1024 MiB. */
export const GiB = 1024 * MiB;
/** 1024 GiB (2^40 bytes). */
export const TiB = 1024 * GiB;

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Converts a byte count/offset given by the caller into a uint64 field value.
 * Throws `RangeError` unless it is an integer in [0, 2^53 - 1], so no size is ever silently rounded.
 * @internal
 */
export function toUint64(value: number, field: string): bigint {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${field} must be an integer between 0 and 2^53-1, got ${value}`);
  }
  return BigInt(value);
}

/** As {@link toUint64} for 32-bit fields. @internal */
export function toUint32(value: number, field: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`${field} must be an integer between 0 and 2^32-1, got ${value}`);
  }
  return value;
}

/**
 * Converts a uint64 received from the server into a number.
 * Throws `RangeError` above 2^53 - 1, where a number could no longer represent every byte offset exactly.
 * @internal
 */
export function fromUint64(value: bigint, field: string): number {
  if (value < 0n || value > MAX_SAFE) {
    throw new RangeError(`${field} = ${value} does not fit in a JavaScript number (above 2^53-1)`);
  }
  return Number(value);
}
