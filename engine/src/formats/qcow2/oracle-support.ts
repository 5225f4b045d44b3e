/**
 * Test support for the qcow2 oracle tests: qemu-img/qemu-io invocation, images on real files, a
 * sparse raw shadow of the expected content, and a seeded random workload. Not used by the driver.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { closeSync, ftruncateSync, openSync, writeSync } from "node:fs";
import type { BlockImage, CreateOptions } from "../../block-image.js";
import { mapExtents } from "../../core/index.js";
import { openHostFile } from "../../host/node-file.js";
import type { Extent } from "../../types.js";
import { qcow2Driver } from "./index.js";

export function requireQemu(): void {
  const r = spawnSync("qemu-img", ["--version"]);
  if (r.status !== 0)
    throw new Error("qemu-img is not installed: the qcow2 oracle tests need it (apt-get install qemu-utils)");
}

export function qemu(
  tool: "qemu-img" | "qemu-io",
  args: string[],
): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(tool, args, { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function qemuOk(tool: "qemu-img" | "qemu-io", args: string[]): string {
  return execFileSync(tool, args, { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 });
}

export async function createImage(path: string, opts: CreateOptions): Promise<BlockImage> {
  const file = await openHostFile(path, { readOnly: false, create: "truncate" });
  await qcow2Driver.create(file, opts);
  return qcow2Driver.open(file, {
    readOnly: false,
    ...(opts.backing ? { backing: opts.backing.image } : {}),
  });
}

export async function openImage(path: string, readOnly: boolean, backing?: BlockImage): Promise<BlockImage> {
  const file = await openHostFile(path, { readOnly });
  return qcow2Driver.open(file, { readOnly, ...(backing ? { backing } : {}) });
}

/** mulberry32: small, seedable, good enough to vary a workload. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A sparse raw file holding the content the image must read as. */
export class Shadow {
  private readonly fd: number;
  constructor(
    readonly path: string,
    size: number,
  ) {
    this.fd = openSync(path, "w+");
    ftruncateSync(this.fd, size);
  }
  write(offset: number, data: Uint8Array): void {
    writeSync(this.fd, data, 0, data.length, offset);
  }
  zero(offset: number, length: number): void {
    if (length > 0) this.write(offset, Buffer.alloc(length));
  }
  close(): void {
    closeSync(this.fd);
  }
}

export interface WorkloadOptions {
  seed: number;
  ops: number;
  clusterSize: number;
  /** Guest bytes one L2 table maps: runs are aimed across these boundaries. */
  l2Coverage: number;
  /** Discards only free whole clusters; with a v2 backing chain they do nothing. */
  discardZeroes: boolean;
}

/**
 * A seeded mix of writes (partial clusters, runs across L2 boundaries), zero writes and discards
 * applied to the image and mirrored into the shadow.
 */
export async function runWorkload(img: BlockImage, shadow: Shadow, o: WorkloadOptions): Promise<void> {
  const rand = rng(o.seed);
  const size = img.virtualSize;
  const cs = o.clusterSize;
  const hotspots = [0, size];
  for (let b = o.l2Coverage; b < size && hotspots.length < 8; b += o.l2Coverage) hotspots.push(b);
  const pick = (): number => {
    const base = hotspots[Math.floor(rand() * hotspots.length)] ?? 0;
    const jitter = Math.floor((rand() - 0.5) * 6 * cs) + Math.floor(rand() * 512);
    return Math.max(0, Math.min(size - 1, base + jitter));
  };
  for (let i = 0; i < o.ops; i++) {
    const offset = pick();
    const length = Math.max(1, Math.min(size - offset, Math.floor(rand() * 3.5 * cs) + 1, 8 * 1024 * 1024));
    const kind = rand();
    if (kind < 0.6) {
      const data = Buffer.alloc(length);
      const seed = (rand() * 0xffffffff) >>> 0;
      for (let k = 0; k + 4 <= length; k += 4)
        data.writeUInt32LE((seed ^ Math.imul(k + 1, 0x9e3779b1)) >>> 0, k);
      data.fill(0x5a, length - (length % 4));
      await img.write(offset, data);
      shadow.write(offset, data);
    } else if (kind < 0.8) {
      await img.writeZeroes(offset, length, { mayUnmap: rand() < 0.5 });
      shadow.zero(offset, length);
    } else {
      await img.discard(offset, length);
      if (o.discardZeroes) {
        const first = Math.ceil(offset / cs) * cs;
        const end =
          offset + length === size ? Math.ceil(size / cs) * cs : Math.floor((offset + length) / cs) * cs;
        if (end > first) shadow.zero(first, Math.min(end, size) - first);
      }
    }
  }
}

type MapEntry = {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
};

export function qemuMap(path: string): MapEntry[] {
  const raw = JSON.parse(qemuOk("qemu-img", ["map", "--output=json", "-f", "qcow2", path])) as MapEntry[];
  return raw.map((e) => normalize(e));
}

function normalize(e: MapEntry | Extent): MapEntry {
  const out: MapEntry = {
    start: e.start,
    length: e.length,
    depth: e.depth,
    present: e.present,
    zero: e.zero,
    data: e.data,
  };
  if (e.offset !== undefined) out.offset = e.offset;
  return out;
}

export async function vdiskMap(img: BlockImage): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  for await (const e of mapExtents(img)) out.push(normalize(e));
  return out;
}

/**
 * qemu-img reports host offsets even for extended-L2 subclusters that defer to the backing
 * (present=false); the core's chain walk drops them. For such images compare without those offsets.
 */
export function withoutDeferredOffsets(entries: MapEntry[]): MapEntry[] {
  const out: MapEntry[] = [];
  for (const e of entries) {
    const x = { ...e };
    if (!x.present) delete x.offset;
    const prev = out[out.length - 1];
    if (
      prev &&
      prev.start + prev.length === x.start &&
      prev.depth === x.depth &&
      prev.present === x.present &&
      prev.zero === x.zero &&
      prev.data === x.data &&
      prev.offset === undefined &&
      x.offset === undefined
    ) {
      prev.length += x.length;
    } else {
      out.push(x);
    }
  }
  return out;
}

/**
 * Write `i` of the crash workload: a partial-cluster-aligned run inside its own 3-cluster slot, so
 * every acknowledged write has exactly one expected content. Undefined past the image end.
 */
export function slotWrite(
  i: number,
  clusterSize: number,
  size: number,
): { offset: number; data: Buffer } | undefined {
  const slot = 3 * clusterSize;
  // Visit slots in a scattered order so new L2 tables and refcount blocks keep being allocated.
  const slots = Math.floor(size / slot);
  if (i >= slots) return undefined;
  const index = (i * 7919) % slots;
  const rand = rng(i + 1);
  const start = Math.floor(rand() * clusterSize);
  const length = 1 + Math.floor(rand() * (2 * clusterSize - 1));
  return { offset: index * slot + start, data: Buffer.alloc(length, (i % 251) + 1) };
}
