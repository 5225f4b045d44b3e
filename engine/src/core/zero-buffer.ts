/**
 * One shared, never-written buffer of zeros: the source for zero-write fallbacks and the reference for
 * zero detection. Callers must treat it as read-only (drivers never modify the data they are given).
 */
export const ZERO_BUFFER_SIZE = 4 * 1024 * 1024;

let zeroBuffer: Buffer | undefined;

export function sharedZeroBuffer(): Buffer {
  zeroBuffer ??= Buffer.alloc(ZERO_BUFFER_SIZE);
  return zeroBuffer;
}

/**
 * True when every byte of `bytes` is zero. Three single-byte probes reject most data blocks before the
 * memcmp-backed Buffer.equals runs; a JavaScript byte loop would be orders of magnitude slower.
 */
export function isAllZero(bytes: Uint8Array): boolean {
  const length = bytes.length;
  if (length === 0) return true;
  if (bytes[0] !== 0 || bytes[length - 1] !== 0 || bytes[length >>> 1] !== 0) return false;
  const zeros = sharedZeroBuffer();
  for (let pos = 0; pos < length; pos += ZERO_BUFFER_SIZE) {
    const chunk = Math.min(ZERO_BUFFER_SIZE, length - pos);
    if (!zeros.subarray(0, chunk).equals(bytes.subarray(pos, pos + chunk))) return false;
  }
  return true;
}

/** A run of a write buffer: `zero` runs can be issued as writeZeroes instead of data. */
export interface DataRun {
  /** Offset within the buffer. */
  start: number;
  length: number;
  zero: boolean;
}

/**
 * Splits a write of `data` at image offset `offset` into alternating data and zero runs. Only whole
 * `blockSize`-aligned blocks (aligned in image coordinates) can be zero runs; partial blocks at either
 * end always count as data. Adjacent blocks of the same kind are coalesced into one run.
 */
export function findZeroRuns(offset: number, data: Uint8Array, blockSize: number): DataRun[] {
  const runs: DataRun[] = [];
  const push = (start: number, length: number, zero: boolean): void => {
    if (length === 0) return;
    const last = runs[runs.length - 1];
    if (last !== undefined && last.zero === zero) last.length += length;
    else runs.push({ start, length, zero });
  };
  const size = data.length;
  const firstBlock = Math.min(size, Math.ceil(offset / blockSize) * blockSize - offset);
  push(0, firstBlock, false);
  let pos = firstBlock;
  while (pos + blockSize <= size) {
    push(pos, blockSize, isAllZero(data.subarray(pos, pos + blockSize)));
    pos += blockSize;
  }
  push(pos, size - pos, false);
  return runs;
}
