import { invalidArgument } from "./errors.js";
import { MAX_EXTENT_SECTORS, SECTOR_SIZE } from "./header.js";

export const DEFAULT_GRAIN_SIZE = 64 * 1024;
export const GTES_PER_GT = 512;
/** Sectors reserved for the embedded descriptor, as QEMU and VMware write it. */
export const DESCRIPTOR_SECTORS = 20;
export const DEFAULT_HW_VERSION = "4";
export const DEFAULT_TOOLS_VERSION = "2147483647";

/** Validates create-time size and grain size; both writers share these rules. */
export function checkCreateGeometry(size: number, grainSize: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size % SECTOR_SIZE !== 0) {
    throw invalidArgument("VMDK_BAD_SIZE", "vmdk size must be a positive multiple of 512 bytes");
  }
  if (size / SECTOR_SIZE > MAX_EXTENT_SECTORS) {
    throw invalidArgument("VMDK_SIZE_TOO_LARGE", "vmdk images are limited to 2^32 sectors (2 TiB)");
  }
  if (
    !Number.isSafeInteger(grainSize) ||
    grainSize < 4096 ||
    grainSize > 2 * 1024 * 1024 ||
    (grainSize & (grainSize - 1)) !== 0
  ) {
    throw invalidArgument(
      "VMDK_BAD_GRAIN_SIZE",
      "vmdk grain size must be a power of two from 4 KiB to 2 MiB",
    );
  }
}

export function sectorsFor(bytes: number): number {
  return Math.ceil(bytes / SECTOR_SIZE);
}

export function padToSector(bytes: Uint8Array): Uint8Array {
  const padded = sectorsFor(bytes.length) * SECTOR_SIZE;
  if (padded === bytes.length) return bytes;
  const out = new Uint8Array(padded);
  out.set(bytes);
  return out;
}
