import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage } from "../../block-image.js";
import { makeLayout } from "./layout.js";
import {
  openImage,
  qemu,
  qemuMap,
  qemuOk,
  requireQemu,
  runWorkload,
  Shadow,
  vdiskMap,
  withoutDeferredOffsets,
} from "./oracle-support.js";

const dir = join("/tmp", `vdisk-qcow2-qemu-${process.pid}`);
const MiB = 1024 * 1024;

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => {
  if (!process.env.KEEP_QCOW2_TEST_FILES) rmSync(dir, { recursive: true, force: true });
});

function qemuImage(name: string, size: number, options: string, ioCommands: string[] = []): string {
  const path = join(dir, `${name}.qcow2`);
  qemuOk("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, path, String(size)]);
  if (ioCommands.length > 0)
    qemuOk("qemu-io", ["-f", "qcow2", ...ioCommands.flatMap((c) => ["-c", c]), path]);
  return path;
}

function rawOf(path: string, extra: string[] = []): Buffer {
  const out = `${path}.${extra.length}.raw`;
  qemuOk("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", ...extra, path, out]);
  return readFileSync(out);
}

async function readAll(img: BlockImage): Promise<Buffer> {
  const out = Buffer.alloc(img.virtualSize);
  for (let at = 0; at < out.length; at += 4 * MiB)
    await img.read(at, out.subarray(at, Math.min(out.length, at + 4 * MiB)));
  return out;
}

async function expectReadsLikeQemu(path: string): Promise<void> {
  const expected = rawOf(path);
  const img = await openImage(path, true);
  try {
    const actual = await readAll(img);
    expect(actual.equals(expected)).toBe(true);
    const extendedL2 = img.details().qcow2?.extendedL2 === true;
    const normalize = extendedL2 ? withoutDeferredOffsets : (x: ReturnType<typeof qemuMap>) => x;
    expect(normalize(await vdiskMap(img))).toEqual(normalize(qemuMap(path)));
  } finally {
    await img.close();
  }
}

function expectQemuClean(path: string): void {
  const r = qemu("qemu-img", ["check", "-f", "qcow2", path]);
  expect(`${r.code} ${r.stdout}${r.stderr}`).toMatch(/^0 No errors were found/);
}

/** qemu-io writes of varied shapes: data, zero writes, discards, crossing cluster boundaries. */
function ioPattern(cs: number, size: number): string[] {
  const at = (x: number) => Math.min(size - cs * 4, x);
  return [
    `write -P 0x11 0 ${cs * 3 + 100}`,
    `write -P 0x22 ${at(cs * 5 + 7)} ${cs * 2}`,
    `write -z ${at(cs * 6)} ${cs}`,
    `write -P 0x33 ${at(size / 2 - cs)} ${cs * 3}`,
    `discard ${at(size / 2)} ${cs}`,
    `write -P 0x44 ${size - cs - 512} ${cs + 512}`,
  ];
}

describe("qemu-made qcow2 images read identically", () => {
  const matrix: Array<[string, number, string]> = [];
  for (const compat of ["0.10", "1.1"]) {
    for (const cs of [512, 4096, 65536, 2 * MiB])
      matrix.push([`compat ${compat} cluster ${cs}`, cs, `compat=${compat},cluster_size=${cs}`]);
  }
  for (const prealloc of ["metadata", "falloc", "full"]) {
    matrix.push([`compat 1.1 preallocation ${prealloc}`, 65536, `preallocation=${prealloc}`]);
    matrix.push([
      `compat 0.10 preallocation ${prealloc}`,
      4096,
      `compat=0.10,cluster_size=4096,preallocation=${prealloc}`,
    ]);
  }
  matrix.push(["extended L2", 65536, "extended_l2=on"]);
  matrix.push(["extended L2, 2M clusters", 2 * MiB, "extended_l2=on,cluster_size=2M"]);
  matrix.push(["refcount bits 1", 65536, "refcount_bits=1"]);
  matrix.push(["refcount bits 64", 4096, "refcount_bits=64,cluster_size=4096"]);

  for (const [name, cs, options] of matrix) {
    it(name, async () => {
      const size = cs >= 2 * MiB ? 32 * MiB : 8 * MiB;
      const path = qemuImage(name.replace(/\W+/g, "_"), size, options, ioPattern(cs, size));
      await expectReadsLikeQemu(path);
    });
  }

  it("compressed clusters (qemu-img convert -c)", async () => {
    const src = qemuImage("compress-src", 8 * MiB, "cluster_size=4096", [
      "write -P 0x61 0 100000",
      "write -P 0x62 3000000 70000",
      "write -z 4000000 100000",
    ]);
    for (const cs of [512, 4096, 65536]) {
      const path = join(dir, `compressed-${cs}.qcow2`);
      qemuOk("qemu-img", [
        "convert",
        "-c",
        "-f",
        "qcow2",
        "-O",
        "qcow2",
        "-o",
        `cluster_size=${cs}`,
        src,
        path,
      ]);
      await expectReadsLikeQemu(path);
      // Overwriting part of a compressed cluster allocates a normal cluster; the image stays clean.
      const img = await openImage(path, false);
      await img.write(50, Buffer.alloc(700, 0x7e));
      await img.close();
      expectQemuClean(path);
      const raw = rawOf(path);
      expect(raw.subarray(50, 750).every((b) => b === 0x7e)).toBe(true);
      expect(raw[49]).toBe(0x61);
    }
  });

  it("zero clusters with and without host clusters", async () => {
    const path = qemuImage("zeroes", 8 * MiB, "preallocation=metadata", [
      "write -P 0x55 0 4M",
      "write -z 65536 131072",
      "write -z -u 1M 196608",
    ]);
    await expectReadsLikeQemu(path);
  });

  it("backing chain made by qemu-img", async () => {
    const base = qemuImage("qchain-base", 8 * MiB, "cluster_size=4096", ["write -P 0x10 0 8M"]);
    const top = join(dir, "qchain-top.qcow2");
    qemuOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    qemuOk("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -P 0x20 100000 5000",
      "-c",
      "write -z 2M 1M",
      "-c",
      "discard 5M 1M",
      top,
    ]);
    const expected = rawOf(top);
    const b = await openImage(base, true);
    const t = await openImage(top, true, b);
    expect((await readAll(t)).equals(expected)).toBe(true);
    expect(await vdiskMap(t)).toEqual(qemuMap(top));
    await t.close();
    await b.close();
  });

  it("internal snapshot: active layer reads and writes copy-on-write; the snapshot stays intact", async () => {
    const path = qemuImage("snap", 8 * MiB, "cluster_size=65536", ["write -P 0x31 0 3M"]);
    qemuOk("qemu-img", ["snapshot", "-c", "s1", path]);
    qemuOk("qemu-io", ["-f", "qcow2", "-c", "write -P 0x32 1M 100000", path]);
    const snapshotBefore = rawOf(path, ["-l", "snapshot.name=s1"]);
    await expectReadsLikeQemu(path);
    const shadow = new Shadow(`${path}.shadow`, 8 * MiB);
    shadow.write(0, rawOf(path));
    const ro = await openImage(path, true);
    expect(await ro.check({ repair: "none" })).toMatchObject({ corruptions: 0, leaks: 0 });
    await ro.close();
    const img = await openImage(path, false);
    expect(img.details().qcow2?.snapshots).toBe(1);
    await runWorkload(img, shadow, {
      seed: 3,
      ops: 30,
      clusterSize: 65536,
      l2Coverage: makeLayout(16, 4, false).l2Coverage,
      discardZeroes: true,
    });
    expect(await img.check({ repair: "none" })).toMatchObject({ corruptions: 0, leaks: 0 });
    await img.close();
    shadow.close();
    expectQemuClean(path);
    expect(qemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", path, shadow.path]).code).toBe(0);
    expect(rawOf(path, ["-l", "snapshot.name=s1"]).equals(snapshotBefore)).toBe(true);
  });

  it("extended L2 images accept writes", async () => {
    const path = qemuImage("extl2-write", 8 * MiB, "extended_l2=on", [
      "write -P 0x41 3000 5000",
      "write -z 100000 30000",
    ]);
    const shadow = new Shadow(`${path}.shadow`, 8 * MiB);
    shadow.write(0, rawOf(path));
    const img = await openImage(path, false);
    await runWorkload(img, shadow, {
      seed: 11,
      ops: 30,
      clusterSize: 65536,
      l2Coverage: 65536 * 4096,
      discardZeroes: true,
    });
    await img.close();
    shadow.close();
    expectQemuClean(path);
    expect(qemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", path, shadow.path]).code).toBe(0);
  });

  it("dirty lazy-refcount image left by a killed qemu-io is repaired on read-write open", async () => {
    const path = qemuImage("dirty", 8 * MiB, "lazy_refcounts=on,cluster_size=4096");
    const r = qemu("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -P 0x5a 0 2M",
      "-c",
      "write -P 0x5b 3M 100000",
      "-c",
      "sigraise 9",
      path,
    ]);
    expect(r.code).not.toBe(0);
    const info = JSON.parse(qemuOk("qemu-img", ["info", "--output=json", "-U", path])) as {
      "dirty-flag": boolean;
    };
    expect(info["dirty-flag"]).toBe(true);
    const expected = rawOf(path);
    const ro = await openImage(path, true);
    expect(ro.details().qcow2?.dirty).toBe(true);
    expect((await readAll(ro)).equals(expected)).toBe(true);
    await ro.close();
    const rw = await openImage(path, false);
    expect(rw.details().qcow2?.dirty).toBe(false);
    await rw.write(5 * MiB, Buffer.alloc(9000, 0x77));
    await rw.close();
    expectQemuClean(path);
    const after = rawOf(path);
    expect(after.subarray(0, 5 * MiB).equals(expected.subarray(0, 5 * MiB))).toBe(true);
    expect(after.subarray(5 * MiB, 5 * MiB + 9000).every((b) => b === 0x77)).toBe(true);
  });
});
