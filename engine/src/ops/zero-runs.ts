/** One zero buffer shared by every comparison; sized for the largest granularity we use. */
const ZEROS = new Uint8Array(2 << 20);

/**
 * True when `bytes` are all zero. Checks three spread-out bytes first (most non-zero blocks are
 * rejected there, as QEMU's buffer_is_zero does), then compares natively with Buffer.equals.
 */
export function isAllZero(bytes: Uint8Array): boolean {
  const n = bytes.length;
  if (n === 0) return true;
  if (bytes[0] !== 0 || bytes[n - 1] !== 0 || bytes[n >>> 1] !== 0) return false;
  for (let off = 0; off < n; off += ZEROS.length) {
    const len = Math.min(ZEROS.length, n - off);
    if (!Buffer.from(bytes.buffer, bytes.byteOffset + off, len).equals(ZEROS.subarray(0, len))) return false;
  }
  return true;
}

/**
 * Splits `bytes` into maximal runs of non-zero `granularity`-sized blocks, as [from, to) pairs.
 * All-zero blocks separate runs; a trailing partial block counts as a block.
 */
export function findNonZeroRuns(bytes: Uint8Array, granularity: number): [number, number][] {
  const runs: [number, number][] = [];
  let runStart = -1;
  for (let off = 0; off < bytes.length; off += granularity) {
    const end = Math.min(bytes.length, off + granularity);
    const zero = isAllZero(bytes.subarray(off, end));
    if (!zero && runStart < 0) runStart = off;
    if (zero && runStart >= 0) {
      runs.push([runStart, off]);
      runStart = -1;
    }
  }
  if (runStart >= 0) runs.push([runStart, bytes.length]);
  return runs;
}
