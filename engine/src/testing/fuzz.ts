import { execFileSync } from "node:child_process";
import fs from "node:fs";
import fsPromises from "node:fs/promises";
import { syncBuiltinESMExports } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BlockImage } from "../block-image.js";
import { mapExtents, readAt, writeAt } from "../core/index.js";
import { EngineError } from "../errors.js";
import { qcow2Driver } from "../formats/qcow2/index.js";
import { vmdkDriver } from "../formats/vmdk/index.js";
import { createMemoryFile } from "../host/memory-file.js";
import { below, pick, rng } from "./random.js";

/**
 * A structure-aware mutation fuzzer for the qcow2 and vmdk drivers (reliability.md T7, field vectors
 * after QEMU's tests/image-fuzzer). Seeds are valid images made by qemu-img; each case mutates one
 * seed (bits, bytes, boundary values in header fields and table entries, descriptor text, truncation)
 * and runs what a service does with an image — open read-only and read-write, map it, read samples,
 * check it, write a little — asserting: only EngineErrors escape, each case ends within its time
 * budget, memory stays bounded, and no file is opened (the driver only ever gets a memory HostFile).
 */

export interface Seed {
  name: string;
  format: "qcow2" | "vmdk";
  bytes: Uint8Array;
  /** Byte ranges worth mutating (header, tables, descriptor...), with a name for reports. */
  regions: Array<{ name: string; start: number; end: number; entry: 1 | 4 | 8 }>;
  /** The unmutated backing image's bytes, for the chain overlay. */
  backing?: Uint8Array;
}

export interface FuzzFinding {
  seed: string;
  caseSeed: number;
  mutations: string[];
  problem: string;
}

const U32 = 0xffffffff;
/** Boundary values from QEMU's image-fuzzer (fuzz.py): small powers, UINT32/UINT64 edges and halves. */
const VECTORS32 = [
  0,
  1,
  0x100,
  0x1000,
  0x10000,
  0x100000,
  U32 / 4,
  0x7fffffff,
  0x80000000,
  0x80000001,
  U32 - 1,
  U32,
];
const VECTORS64: bigint[] = [
  0n,
  1n,
  0x200n,
  0x10000n,
  1n << 32n,
  (1n << 53n) + 1n,
  (1n << 56n) - 512n,
  (1n << 63n) - 1n,
  1n << 63n,
  (1n << 64n) - 1n,
];

// ---------------------------------------------------------------------------------------------------
// Seeds

function run(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** Builds the seed corpus with qemu-img / qemu-io in a scratch directory (small images: cheap cases). */
export function buildSeeds(): Seed[] {
  const dir = fs.mkdtempSync(join(tmpdir(), "vdisk-fuzz-"));
  try {
    const p = (name: string) => join(dir, name);
    const data = (path: string, fmt: string) =>
      run("qemu-io", [
        "-f",
        fmt,
        "-c",
        "write -P 0x5a 0 12k",
        "-c",
        "write -P 0x33 300k 8k",
        "-c",
        "write -z 600k 4k",
        path,
      ]);
    const seeds: Seed[] = [];
    const qcow2 = (name: string, opts: string, size = "1M") => {
      run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", opts, p(name), size]);
      data(p(name), "qcow2");
      return p(name);
    };
    seeds.push(qcow2Seed("qcow2-v2", fs.readFileSync(qcow2("v2.qcow2", "compat=0.10,cluster_size=4096"))));
    seeds.push(qcow2Seed("qcow2-v3", fs.readFileSync(qcow2("v3.qcow2", "compat=1.1,cluster_size=4096"))));
    seeds.push(
      qcow2Seed(
        "qcow2-extl2",
        fs.readFileSync(qcow2("extl2.qcow2", "compat=1.1,cluster_size=16384,extended_l2=on")),
      ),
    );
    run("qemu-img", [
      "convert",
      "-q",
      "-c",
      "-f",
      "qcow2",
      "-O",
      "qcow2",
      "-o",
      "cluster_size=4096",
      p("v3.qcow2"),
      p("comp.qcow2"),
    ]);
    seeds.push(qcow2Seed("qcow2-compressed", fs.readFileSync(p("comp.qcow2"))));
    const snap = qcow2("snap.qcow2", "compat=1.1,cluster_size=4096");
    run("qemu-img", ["snapshot", "-c", "s1", snap]);
    run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x77 4k 8k", snap]);
    seeds.push(qcow2Seed("qcow2-snapshot", fs.readFileSync(snap)));
    const base = p("base.qcow2");
    fs.copyFileSync(p("v3.qcow2"), base);
    run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=4096",
      "-b",
      "base.qcow2",
      "-F",
      "qcow2",
      p("overlay.qcow2"),
    ]);
    run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x44 8k 8k", p("overlay.qcow2")]);
    seeds.push({
      ...qcow2Seed("qcow2-overlay", fs.readFileSync(p("overlay.qcow2"))),
      backing: fs.readFileSync(base),
    });

    run("qemu-img", ["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse", p("s.vmdk"), "1M"]);
    data(p("s.vmdk"), "vmdk");
    seeds.push(vmdkSeed("vmdk-sparse", fs.readFileSync(p("s.vmdk"))));
    run("qemu-img", [
      "convert",
      "-q",
      "-f",
      "vmdk",
      "-O",
      "vmdk",
      "-o",
      "subformat=streamOptimized",
      p("s.vmdk"),
      p("so.vmdk"),
    ]);
    seeds.push(vmdkSeed("vmdk-stream", fs.readFileSync(p("so.vmdk"))));
    return seeds;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function be32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at);
}
function be64(b: Uint8Array, at: number): number {
  return Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(at) & 0xffffffffffffffn);
}
function le32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(at, true);
}
function le64(b: Uint8Array, at: number): number {
  return Number(new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(at, true) & 0xffffffffffffn);
}

function qcow2Seed(name: string, bytes: Uint8Array): Seed {
  const cs = 2 ** be32(bytes, 20);
  const headerEnd = Math.min(cs, bytes.length);
  const l1Size = be32(bytes, 36);
  const l1 = be64(bytes, 40);
  const rt = be64(bytes, 48);
  const rtBytes = be32(bytes, 56) * cs;
  const snaps = be64(bytes, 64);
  const regions: Seed["regions"] = [
    { name: "header", start: 0, end: 104, entry: 8 },
    { name: "header-fields", start: 0, end: 104, entry: 4 },
    { name: "extensions", start: 72, end: headerEnd, entry: 4 },
    { name: "l1", start: l1, end: l1 + l1Size * 8, entry: 8 },
    { name: "reftable", start: rt, end: rt + Math.min(rtBytes, 64), entry: 8 },
  ];
  for (let i = 0; i < l1Size; i++) {
    const l2 = be64(bytes, l1 + i * 8) & ~511;
    if (l2 !== 0 && l2 + cs <= bytes.length)
      regions.push({ name: `l2[${i}]`, start: l2, end: l2 + cs, entry: 8 });
  }
  const block = be64(bytes, rt) & ~511;
  if (block !== 0)
    regions.push({ name: "refblock0", start: block, end: Math.min(block + cs, bytes.length), entry: 1 });
  if (snaps !== 0)
    regions.push({ name: "snapshots", start: snaps, end: Math.min(snaps + 256, bytes.length), entry: 4 });
  return {
    name,
    format: "qcow2",
    bytes,
    regions: regions.filter((r) => r.end > r.start && r.end <= bytes.length),
  };
}

function vmdkSeed(name: string, bytes: Uint8Array): Seed {
  const regions: Seed["regions"] = [
    { name: "header", start: 0, end: 80, entry: 8 },
    { name: "header-fields", start: 0, end: 80, entry: 4 },
  ];
  const descOffset = le64(bytes, 28) * 512;
  const descSize = le64(bytes, 36) * 512;
  if (descOffset > 0)
    regions.push({
      name: "descriptor",
      start: descOffset,
      end: Math.min(descOffset + Math.min(descSize, 1024), bytes.length),
      entry: 1,
    });
  const footer = bytes.length - 1024;
  if (le64(bytes, 56) === 0xffffffffffff) {
    regions.push({ name: "footer", start: footer, end: footer + 80, entry: 4 });
    regions.push({ name: "eos", start: bytes.length - 512, end: bytes.length, entry: 4 });
  }
  for (const [what, at] of [
    ["gd", 56],
    ["rgd", 48],
  ] as const) {
    const gd = le64(bytes, at) * 512;
    if (gd > 0 && gd < bytes.length) {
      regions.push({ name: what, start: gd, end: Math.min(gd + 64, bytes.length), entry: 4 });
      const gt = le32(bytes, gd) * 512;
      if (gt > 0 && gt < bytes.length)
        regions.push({ name: `${what}-table0`, start: gt, end: Math.min(gt + 2048, bytes.length), entry: 4 });
    }
  }
  // Grain markers of streamOptimized images sit right after the metadata: mutate some too.
  const grains = le64(bytes, 64) * 512;
  if (grains > 0 && grains < bytes.length)
    regions.push({ name: "grains", start: grains, end: Math.min(grains + 4096, bytes.length), entry: 4 });
  return {
    name,
    format: "vmdk",
    bytes,
    regions: regions.filter((r) => r.end > r.start && r.end <= bytes.length),
  };
}

// ---------------------------------------------------------------------------------------------------
// Mutation

/** Returns the mutated bytes and a description of each mutation (for replay and reports). */
export function mutate(seed: Seed, caseSeed: number): { bytes: Uint8Array; mutations: string[] } {
  const random = rng(caseSeed);
  let bytes = new Uint8Array(seed.bytes); // a copy (Buffer#slice would share the seed)
  const mutations: string[] = [];
  const count = 1 + below(random, 3);
  for (let m = 0; m < count; m++) {
    const region = pick(random, seed.regions);
    const span = region.end - region.start;
    const kind = random();
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const little = seed.format === "vmdk";
    if (kind < 0.05) {
      const at = below(random, bytes.length);
      bytes = bytes.slice(0, at);
      mutations.push(`truncate to ${at}`);
      break;
    } else if (kind < 0.3 || region.entry === 1) {
      const at = region.start + below(random, span);
      const bit = below(random, 8);
      if (at < bytes.length) bytes[at] = (bytes[at] ?? 0) ^ (1 << bit);
      mutations.push(`${region.name}: flip bit ${bit} at ${at}`);
    } else if (kind < 0.45) {
      const at = region.start + below(random, span);
      const value = below(random, 256);
      if (at < bytes.length) bytes[at] = value;
      mutations.push(`${region.name}: byte ${at} = ${value}`);
    } else if (region.entry === 4) {
      const at = region.start + below(random, Math.max(1, Math.floor(span / 4))) * 4;
      if (at + 4 > bytes.length) continue;
      const old = view.getUint32(at, little);
      const choices = [...VECTORS32, old + 1, old - 1, old * 2, old >>> 1];
      const value = (pick(random, choices) >>> 0) & U32;
      view.setUint32(at, value, little);
      mutations.push(`${region.name}: u32 at ${at} ${old} -> ${value}`);
    } else {
      const at = region.start + below(random, Math.max(1, Math.floor(span / 8))) * 8;
      if (at + 8 > bytes.length) continue;
      const old = view.getBigUint64(at, little);
      const choices = [...VECTORS64, old + 1n, old - 1n, old + 512n, old ^ (1n << 63n), old ^ 1n, old * 2n];
      const value = BigInt.asUintN(64, pick(random, choices));
      view.setBigUint64(at, value, little);
      mutations.push(`${region.name}: u64 at ${at} ${old} -> ${value}`);
    }
  }
  return { bytes, mutations };
}

// ---------------------------------------------------------------------------------------------------
// Running cases

export interface FuzzLimits {
  /** Wall-clock budget of one case. */
  caseMillis: number;
  /** RSS growth over the start of the run that counts as unbounded allocation. */
  rssGrowthBytes: number;
}

export const DEFAULT_LIMITS: FuzzLimits = { caseMillis: 2000, rssGrowthBytes: 768 * 1024 * 1024 };

const SAMPLE = 16 * 1024;

async function exercise(
  img: BlockImage,
  random: () => number,
  signal: AbortSignal,
  write: boolean,
): Promise<void> {
  let extents = 0;
  for await (const _ of mapExtents(img, { signal })) {
    if (++extents > 100_000) break;
  }
  const size = img.virtualSize;
  for (let i = 0; i < 3 && size > 0; i++) {
    const offset = below(random, Math.max(1, Math.min(size, 2 ** 40)));
    const length = Math.min(SAMPLE, size - offset);
    await readAt(img, offset, length, { signal });
  }
  await img.check({ repair: "none", signal });
  if (write && size > 0) {
    const offset = below(random, Math.max(1, Math.min(size, 2 ** 40)));
    await writeAt(img, offset, new Uint8Array(Math.min(4096, size - offset)).fill(0x99), { signal });
    await img.flush({ signal });
  }
}

async function tolerate(work: () => Promise<unknown>): Promise<void> {
  try {
    await work();
  } catch (err) {
    if (!(err instanceof EngineError)) throw err;
    if (err.code === "INTERNAL") throw err; // an invariant broke: a bug, not a rejection
    if (err.code === "DEADLINE_EXCEEDED") throw err;
  }
}

/** Opens, maps, reads and checks one mutated image (read-only, then read-write). Throws on a finding. */
async function runCase(
  seed: Seed,
  caseSeed: number,
  bytes: Uint8Array,
  limits: FuzzLimits,
  write: boolean,
): Promise<boolean> {
  let opened = false;
  const driver = seed.format === "qcow2" ? qcow2Driver : vmdkDriver;
  const random = rng(caseSeed ^ 0xf022);
  const signal = AbortSignal.timeout(limits.caseMillis);
  const backing = seed.backing
    ? await qcow2Driver.open(createMemoryFile({ data: seed.backing, readOnly: true }), { readOnly: true })
    : undefined;
  const withBacking = backing ? { backing } : {};
  await tolerate(async () => {
    const img = await driver.open(createMemoryFile({ data: bytes, readOnly: true }), {
      readOnly: true,
      ...withBacking,
    });
    opened = true;
    try {
      await tolerate(() => exercise(img, random, signal, false));
    } finally {
      await tolerate(() => img.close());
    }
  });
  if (write) {
    await tolerate(async () => {
      const img = await driver.open(createMemoryFile({ data: bytes }), { readOnly: false, ...withBacking });
      try {
        await tolerate(() => exercise(img, random, signal, true));
      } finally {
        await tolerate(() => img.close());
      }
    });
  }
  await backing?.close();
  return opened;
}

/** Makes every way of opening a file through node:fs fail loudly while `fn` runs. */
export async function withoutFileOpens<T>(fn: (opened: string[]) => Promise<T>): Promise<T> {
  const opened: string[] = [];
  const saved = {
    open: fs.open,
    openSync: fs.openSync,
    promisesOpen: fsPromises.open,
    readFile: fs.readFileSync,
  };
  const deny = (path: unknown) => {
    opened.push(String(path));
    throw new Error(`fuzz case opened a file: ${String(path)}`);
  };
  fs.open = ((path: fs.PathLike) => deny(path)) as unknown as typeof fs.open;
  fs.openSync = ((path: fs.PathLike) => deny(path)) as typeof fs.openSync;
  fsPromises.open = (async (path: fs.PathLike) => deny(path)) as unknown as typeof fsPromises.open;
  fs.readFileSync = ((path: fs.PathLike) => deny(path)) as typeof fs.readFileSync;
  syncBuiltinESMExports();
  try {
    return await fn(opened);
  } finally {
    fs.open = saved.open;
    fs.openSync = saved.openSync;
    fsPromises.open = saved.promisesOpen;
    fs.readFileSync = saved.readFile;
    syncBuiltinESMExports();
  }
}

export interface FuzzReport {
  cases: number;
  findings: FuzzFinding[];
  /** Cases whose mutated image still opened read-only (the rest were rejected at open). */
  opened: number;
  slowestMillis: number;
  peakRssGrowth: number;
}

/** Runs `cases` cases round-robin over the seeds, case i from seed `baseSeed + i`. */
export async function fuzz(
  seeds: readonly Seed[],
  opts: { cases: number; baseSeed: number; limits?: FuzzLimits; writeEvery?: number; maxFindings?: number },
): Promise<FuzzReport> {
  const limits = opts.limits ?? DEFAULT_LIMITS;
  const writeEvery = opts.writeEvery ?? 4;
  const report: FuzzReport = { cases: 0, findings: [], opened: 0, slowestMillis: 0, peakRssGrowth: 0 };
  const rssStart = process.memoryUsage().rss;
  await withoutFileOpens(async (opened) => {
    for (let i = 0; i < opts.cases; i++) {
      const seed = seeds[i % seeds.length];
      if (seed === undefined) break;
      const caseSeed = opts.baseSeed + i;
      const { bytes, mutations } = mutate(seed, caseSeed);
      const started = performance.now();
      let problem: string | undefined;
      try {
        if (await runCase(seed, caseSeed, bytes, limits, i % writeEvery === 0)) report.opened++;
      } catch (err) {
        problem =
          err instanceof EngineError
            ? `${err.code} ${err.reason}: ${err.message}`
            : `uncaught ${err instanceof Error ? `${err.name}: ${err.message}\n${err.stack?.split("\n").slice(1, 4).join("\n")}` : String(err)}`;
      }
      const elapsed = performance.now() - started;
      report.slowestMillis = Math.max(report.slowestMillis, elapsed);
      if (problem === undefined && elapsed > limits.caseMillis) problem = `took ${Math.round(elapsed)} ms`;
      if (problem === undefined && opened.length > 0) problem = `opened files: ${opened.join(", ")}`;
      opened.length = 0;
      if (i % 64 === 0) {
        const growth = process.memoryUsage().rss - rssStart;
        report.peakRssGrowth = Math.max(report.peakRssGrowth, growth);
        if (growth > limits.rssGrowthBytes && problem === undefined) problem = `RSS grew by ${growth} bytes`;
      }
      report.cases++;
      if (problem !== undefined) {
        report.findings.push({ seed: seed.name, caseSeed, mutations, problem });
        if (report.findings.length >= (opts.maxFindings ?? 50)) break;
      }
    }
  });
  return report;
}
