import { spawnSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BlockImage, CreateOptions } from "../block-image.js";
import { qcow2Driver } from "../formats/qcow2/index.js";
import { vmdkDriver } from "../formats/vmdk/index.js";
import type { HostFile } from "../host/host-file.js";
import { createMemoryFile } from "../host/memory-file.js";

/** Image variants the reliability tests run on, all small enough to keep each case cheap. */
export interface Variant {
  name: string;
  format: "qcow2" | "vmdk";
  create: CreateOptions;
  /** Guest bytes per L2 table / grain table. */
  tableCoverage: number;
}

export function qcow2Variant(
  name: string,
  opts: { size: number; clusterSize: number; version: 2 | 3; lazy?: boolean; refcountBits?: number },
): Variant {
  return {
    name,
    format: "qcow2",
    create: {
      size: opts.size,
      prealloc: "off",
      clusterSize: opts.clusterSize,
      qcow2: {
        compat: opts.version === 2 ? "0.10" : "1.1",
        lazyRefcounts: opts.lazy === true,
        ...(opts.refcountBits !== undefined ? { refcountBits: opts.refcountBits } : {}),
      },
    },
    tableCoverage: (opts.clusterSize / 8) * opts.clusterSize,
  };
}

export function vmdkVariant(name: string, opts: { size: number; grainSize: number }): Variant {
  return {
    name,
    format: "vmdk",
    create: {
      size: opts.size,
      prealloc: "off",
      clusterSize: opts.grainSize,
      vmdk: { subformat: "monolithicSparse" },
    },
    tableCoverage: 512 * opts.grainSize,
  };
}

export function driverOf(format: "qcow2" | "vmdk") {
  return format === "qcow2" ? qcow2Driver : vmdkDriver;
}

/** The bytes of a freshly created image. */
export async function createImageBytes(v: Variant): Promise<Uint8Array> {
  const file = createMemoryFile();
  await driverOf(v.format).create(file, v.create);
  return file.contents();
}

export async function openOn(v: Variant, file: HostFile, readOnly = false): Promise<BlockImage> {
  return driverOf(v.format).open(file, { readOnly });
}

export async function openBytes(v: Variant, bytes: Uint8Array, readOnly = false): Promise<BlockImage> {
  return openOn(v, createMemoryFile({ data: bytes, readOnly }), readOnly);
}

export function requireQemuImg(): void {
  const r = spawnSync("qemu-img", ["--version"]);
  if (r.status !== 0)
    throw new Error("qemu-img is not installed: the reliability tests need it (qemu-utils)");
}

const scratch = join(tmpdir(), `vdisk-rel-${process.pid}`);

/** `qemu-img check` of image bytes written to a real temp file: exit code (0 clean, 3 leaks, 2 corrupt) and output. */
export function qemuCheck(bytes: Uint8Array, format: "qcow2" | "vmdk"): { code: number; output: string } {
  mkdirSync(scratch, { recursive: true });
  const path = join(scratch, `check.${format}`);
  writeFileSync(path, bytes);
  const r = spawnSync("qemu-img", ["check", "-f", format, path], { encoding: "utf8" });
  return { code: r.status ?? -1, output: `${r.stdout}${r.stderr}`.replaceAll(path, "<image>") };
}

export function removeScratch(): void {
  rmSync(scratch, { recursive: true, force: true });
}
