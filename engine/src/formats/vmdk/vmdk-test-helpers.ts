import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BlockImage } from "../../block-image.js";
import type { HostFile } from "../../host/host-file.js";
import { openHostFile } from "../../host/node-file.js";

/** Runs qemu-img (the oracle). A missing binary fails the test loudly rather than skipping it. */
export function qemuImg(args: string[]): { code: number; stdout: string; stderr: string } {
  const result = spawnSync("qemu-img", args, { encoding: "utf8", timeout: 60_000 });
  if (result.error)
    throw new Error(`qemu-img could not run (is qemu-utils installed?): ${result.error.message}`);
  return { code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

export function qemuIo(args: string[]): string {
  const result = spawnSync("qemu-io", args, { encoding: "utf8", timeout: 60_000 });
  if (result.error)
    throw new Error(`qemu-io could not run (is qemu-utils installed?): ${result.error.message}`);
  if (result.status !== 0)
    throw new Error(`qemu-io ${args.join(" ")} failed: ${result.stderr}${result.stdout}`);
  return result.stdout;
}

export function makeScratchDir(): { dir: string; path: (name: string) => string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "vdisk-vmdk-"));
  return {
    dir,
    path: (name) => join(dir, name),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export function openFile(path: string, mode: "read" | "write" | "create"): Promise<HostFile> {
  if (mode === "create") return openHostFile(path, { readOnly: false, create: "new" });
  return openHostFile(path, { readOnly: mode === "read" });
}

/** Bytes that differ per offset, so misplaced data can't compare equal by accident. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff || 1;
  return out;
}

export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/**
 * The per-layer map of a backing-less image in `qemu-img map --output=json` form, built from
 * blockStatus. Like qemu-img, neighbouring runs merge when their flags match and host offsets continue.
 */
export async function layerMap(image: BlockImage): Promise<QemuMapEntry[]> {
  const entries: QemuMapEntry[] = [];
  for (let at = 0; at < image.virtualSize; ) {
    const s = await image.blockStatus(at, image.virtualSize - at);
    const length = Math.min(s.length, image.virtualSize - at);
    const entry: QemuMapEntry = s.allocated
      ? { start: at, length, depth: 0, present: true, zero: s.zero, data: s.data }
      : { start: at, length, depth: 0, present: false, zero: true, data: false };
    if (s.allocated && s.hostOffset !== undefined) entry.offset = s.hostOffset;
    const last = entries.at(-1);
    const contiguous =
      last !== undefined &&
      (last.offset === undefined ? entry.offset === undefined : entry.offset === last.offset + last.length);
    if (
      last &&
      contiguous &&
      last.present === entry.present &&
      last.zero === entry.zero &&
      last.data === entry.data
    ) {
      last.length += length;
    } else entries.push(entry);
    at += length;
  }
  return entries;
}

export function qemuMap(path: string): QemuMapEntry[] {
  const r = qemuImg(["map", "--output=json", "-f", "vmdk", path]);
  if (r.code !== 0) throw new Error(`qemu-img map failed: ${r.stderr}`);
  return (JSON.parse(r.stdout) as (QemuMapEntry & { compressed?: boolean })[]).map(
    ({ compressed: _c, ...e }) => e,
  );
}

/** Byte equality for large buffers (deep-equal matchers are far too slow at tens of MiB). */
export function firstDifference(a: Uint8Array, b: Uint8Array): string | undefined {
  if (
    Buffer.compare(
      Buffer.from(a.buffer, a.byteOffset, a.length),
      Buffer.from(b.buffer, b.byteOffset, b.length),
    ) === 0
  )
    return undefined;
  if (a.length !== b.length) return `lengths differ: ${a.length} vs ${b.length}`;
  const at = a.findIndex((v, i) => v !== b[i]);
  return `first difference at byte ${at}: ${a[at]} vs ${b[at]}`;
}
