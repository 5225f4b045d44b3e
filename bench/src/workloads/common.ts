import path from "node:path";
import type { FormatName } from "@vdisk/engine";
import { fsyncFiles } from "../util/proc.js";

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

/** Scales a size and rounds it to whole `unit`s (at least one), so every format accepts it. */
export function scaled(size: number, scale: number, unit = MiB): number {
  return Math.max(unit, Math.round((size * scale) / unit) * unit);
}

export function scaledCount(count: number, scale: number, min = 1): number {
  return Math.max(min, Math.round(count * scale));
}

/** Seconds spent in `fn`. */
export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - started) / 1e9;
}

/** Where the server keeps a volume (pool layout: POOL/NAME.raw|.qcow2|.vmdk). */
export function poolFile(poolDir: string, name: string, format: FormatName): string {
  return path.join(poolDir, `${name}.${format}`);
}

/** Makes an output durable inside the timed section, for every side alike. */
export function durable(...paths: string[]): Promise<void> {
  return fsyncFiles(paths);
}

export function humanBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(2)} ${units[unit]}`;
}
