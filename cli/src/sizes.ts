/**
 * Sizes as operators type them: a byte count or a number with a binary unit. K, KB and KiB all mean 1024
 * (as in qemu-img and the server's config), so a size copied from qemu-img never silently means 10^n.
 */
const UNITS: Record<string, number> = {
  "": 1,
  K: 1024,
  M: 1024 ** 2,
  G: 1024 ** 3,
  T: 1024 ** 4,
  P: 1024 ** 5,
  E: 1024 ** 6,
};

/** Parses `4096`, `512M`, `10G`, `1TiB`, `1.5G`; throws RangeError on anything else or above 2^53-1. */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:i?B)?\s*$/i.exec(text);
  if (!match) throw new RangeError(`"${text}" is not a size (examples: 4096, 512M, 10G, 1TiB)`);
  const unit = UNITS[(match[2] as string).toUpperCase()] as number;
  const value = Number(match[1]) * unit;
  if (!Number.isSafeInteger(value)) {
    if (Number.isFinite(value) && value <= Number.MAX_SAFE_INTEGER)
      throw new RangeError(`"${text}" is not a whole number of bytes`);
    throw new RangeError(`"${text}" is too large (at most 2^53-1 bytes)`);
  }
  return value;
}

const NAMES = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/** Formats a byte count for people: `0 B`, `4 KiB`, `1.5 GiB`, `8 TiB` (at most 3 significant decimals). */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 1024) return `${Math.max(0, Math.round(bytes))} B`;
  let unit = 0;
  let value = bytes;
  while (value >= 1024 && unit < NAMES.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${Number(value.toFixed(digits))} ${NAMES[unit]}`;
}
