import { readFileSync, writeFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { BlockImage } from "../../block-image.js";
import { SECTOR_SIZE } from "./header.js";
import { vmdkDriver, writeStreamOptimized } from "./index.js";
import {
  firstDifference,
  layerMap,
  makeScratchDir,
  openFile,
  pattern,
  qemuImg,
  qemuIo,
  qemuMap,
} from "./vmdk-test-helpers.js";

// Crosses the 32 MiB grain-table boundary and ends in a partial (4 KiB) grain.
const SIZE = 33 * 1024 * 1024 + 4096;
const MiB = 1024 * 1024;
const scratch = makeScratchDir();

afterAll(() => scratch.remove());

/** Applies the same edits to a vdisk image and to an in-memory expected disk. */
async function exerciseImage(image: BlockImage, expected: Uint8Array, zeroedGrain: boolean): Promise<void> {
  const write = async (offset: number, data: Uint8Array) => {
    await image.write(offset, data);
    expected.set(data, offset);
  };
  const zero = async (offset: number, length: number) => {
    await image.writeZeroes(offset, length);
    expected.fill(0, offset, offset + length);
  };
  await write(512, pattern(4096, 1)); // partial first grain
  await write(MiB + 1000, pattern(200 * 1024, 2)); // unaligned, several grains
  await write(32 * MiB - 128 * 1024, pattern(256 * 1024, 3)); // across the grain-table boundary
  await write(SIZE - 4096, pattern(4096, 4)); // the short last grain
  await write(MiB + 50_000, pattern(8192, 5)); // in place, over allocated grains
  await zero(2 * MiB, 128 * 1024); // whole unallocated grains
  await zero(MiB + 64 * 1024, 64 * 1024); // a whole allocated grain
  await zero(MiB + 3000, 1000); // inside an allocated grain
  await write(MiB + 200 * 1024, pattern(100, 6));
  // Several writers at once into one unallocated grain must not allocate it twice.
  await Promise.all(Array.from({ length: 8 }, (_, i) => write(5 * MiB + i * 8192, pattern(8192, 10 + i))));
  if (zeroedGrain) expect(image.limits.zeroAlignment).toBe(64 * 1024);
}

async function readAll(image: BlockImage): Promise<Uint8Array> {
  const out = new Uint8Array(image.virtualSize);
  for (let at = 0; at < out.length; at += 4 * MiB)
    await image.read(at, out.subarray(at, Math.min(at + 4 * MiB, out.length)));
  return out;
}

describe.each([false, true])("vdisk-written monolithicSparse (zeroedGrain=%s)", (zeroedGrain) => {
  const path = scratch.path(`vdisk-sparse-${zeroedGrain}.vmdk`);
  const rawPath = scratch.path(`vdisk-sparse-${zeroedGrain}.raw`);
  let ourMap: Awaited<ReturnType<typeof layerMap>>;
  const expected = new Uint8Array(SIZE);

  beforeAll(async () => {
    const file = await openFile(path, "create");
    await vmdkDriver.create(file, { size: SIZE, prealloc: "off", vmdk: { zeroedGrain } });
    const image = await vmdkDriver.open(file, { readOnly: false });
    await exerciseImage(image, expected, zeroedGrain);
    expect(firstDifference(await readAll(image), expected)).toBeUndefined();
    ourMap = await layerMap(image);
    await image.close();
    writeFileSync(rawPath, expected);
  });

  test("qemu-img check finds no errors", () => {
    const r = qemuImg(["check", "-f", "vmdk", path]);
    expect(r.stderr + r.stdout).toContain("No errors were found");
    expect(r.code).toBe(0);
  });

  test("qemu-img compare says identical to the expected raw content", () => {
    const r = qemuImg(["compare", "-f", "vmdk", "-F", "raw", path, rawPath]);
    expect(r.stdout).toContain("Images are identical");
    expect(r.code).toBe(0);
  });

  test("the layer map equals qemu-img map", () => {
    expect(ourMap).toEqual(qemuMap(path));
  });

  test("reopened, it reads back the same and check finds nothing", async () => {
    const image = await vmdkDriver.open(await openFile(path, "read"), { readOnly: true });
    try {
      expect(firstDifference(await readAll(image), expected)).toBeUndefined();
      const result = await image.check({ repair: "none" });
      expect(result.messages).toEqual([]);
      expect(result.corruptions).toBe(0);
      expect(image.details().vmdk).toMatchObject({
        subformat: "monolithicSparse",
        grainSize: 65536,
        parentCid: 0xffffffff,
      });
    } finally {
      await image.close();
    }
  });
});

describe("vdisk-written streamOptimized", () => {
  const path = scratch.path("vdisk-stream.vmdk");
  const rawPath = scratch.path("vdisk-stream.raw");
  const expected = new Uint8Array(SIZE);

  beforeAll(async () => {
    expected.set(pattern(4096, 1), 512);
    expected.set(pattern(300 * 1024, 2), MiB + 1000);
    expected.set(pattern(256 * 1024, 3), 32 * MiB - 128 * 1024);
    expected.set(pattern(4096, 4), SIZE - 4096);
    writeFileSync(rawPath, expected);
    const file = await openFile(path, "create");
    let at = 0;
    const produced = await writeStreamOptimized(
      {
        size: SIZE,
        read: async (offset, into) => into.set(expected.subarray(offset, offset + into.length)),
      },
      {
        write: async (bytes) => {
          await file.write(at, bytes);
          at += bytes.length;
        },
      },
    );
    expect(produced).toBe(at);
    await file.close();
  });

  test("qemu-img check finds no errors and compare says identical", () => {
    const check = qemuImg(["check", "-f", "vmdk", path]);
    expect(check.stderr + check.stdout).toContain("No errors were found");
    expect(check.code).toBe(0);
    const compare = qemuImg(["compare", "-f", "vmdk", "-F", "raw", path, rawPath]);
    expect(compare.stdout).toContain("Images are identical");
    expect(compare.code).toBe(0);
    const info = JSON.parse(qemuImg(["info", "--output=json", "-f", "vmdk", path]).stdout);
    expect(info["format-specific"].data["create-type"]).toBe("streamOptimized");
  });

  test("vdisk reads it back and its layer map equals qemu-img map", async () => {
    const image = await vmdkDriver.open(await openFile(path, "write"), { readOnly: false });
    try {
      expect(image.readOnly).toBe(true);
      expect(firstDifference(await readAll(image), expected)).toBeUndefined();
      expect(await layerMap(image)).toEqual(qemuMap(path));
      expect((await image.check({ repair: "none" })).corruptions).toBe(0);
      await expect(image.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: "READ_ONLY" });
    } finally {
      await image.close();
    }
  });
});

describe.each([
  ["monolithicSparse", "off"],
  ["monolithicSparse", "on"],
  ["streamOptimized", "off"],
] as const)("qemu-written %s (zeroed_grain=%s)", (subformat, zeroedGrain) => {
  const path = scratch.path(`qemu-${subformat}-${zeroedGrain}.vmdk`);
  const sourcePath = scratch.path(`qemu-${subformat}-${zeroedGrain}.src.raw`);
  const rawPath = scratch.path(`qemu-${subformat}-${zeroedGrain}.raw`);

  beforeAll(() => {
    const source = new Uint8Array(SIZE);
    source.set(pattern(4096, 7), 512);
    source.set(pattern(300 * 1024, 8), MiB + 1000);
    source.set(pattern(256 * 1024, 9), 32 * MiB - 128 * 1024);
    source.set(pattern(4096, 10), SIZE - 4096);
    writeFileSync(sourcePath, source);
    const opts = `subformat=${subformat}${subformat === "monolithicSparse" ? `,zeroed_grain=${zeroedGrain}` : ""}`;
    const convert = qemuImg(["convert", "-f", "raw", "-O", "vmdk", "-o", opts, sourcePath, path]);
    expect(convert.code, convert.stderr).toBe(0);
    if (subformat === "monolithicSparse") {
      // Zero a whole allocated grain, whole unallocated grains, and part of a grain.
      qemuIo([
        "-f",
        "vmdk",
        "-c",
        "write -z 1M 64k",
        "-c",
        "write -z 4M 128k",
        "-c",
        "write -z 1100k 4k",
        path,
      ]);
    }
    expect(qemuImg(["convert", "-f", "vmdk", "-O", "raw", path, rawPath]).code).toBe(0);
  });

  test("vdisk reads exactly what qemu-img convert -O raw produces", async () => {
    const image = await vmdkDriver.open(await openFile(path, "read"), { readOnly: true });
    try {
      expect(image.virtualSize).toBe(SIZE);
      const ours = await readAll(image);
      const theirs = readFileSync(rawPath);
      expect(firstDifference(ours, theirs)).toBeUndefined();
      expect(await layerMap(image)).toEqual(qemuMap(path));
      expect((await image.check({ repair: "none" })).corruptions).toBe(0);
    } finally {
      await image.close();
    }
  });

  if (subformat === "monolithicSparse") {
    test("vdisk writes into it and qemu still agrees", async () => {
      const copy = scratch.path(`qemu-${subformat}-${zeroedGrain}.rw.vmdk`);
      writeFileSync(copy, readFileSync(path));
      const expected = new Uint8Array(readFileSync(rawPath));
      const image = await vmdkDriver.open(await openFile(copy, "write"), { readOnly: false });
      const cidBefore = image.details().vmdk!.cid;
      const data = pattern(70_000, 11);
      await image.write(6 * MiB - 5000, data);
      expected.set(data, 6 * MiB - 5000);
      expect(image.details().vmdk!.cid).not.toBe(cidBefore);
      await image.close();
      const expectedPath = scratch.path(`qemu-${subformat}-${zeroedGrain}.rw.raw`);
      writeFileSync(expectedPath, expected);
      expect(qemuImg(["check", "-f", "vmdk", copy]).code).toBe(0);
      expect(qemuImg(["compare", "-f", "vmdk", "-F", "raw", copy, expectedPath]).code).toBe(0);
      const info = JSON.parse(qemuImg(["info", "--output=json", "-f", "vmdk", copy]).stdout);
      expect(info["format-specific"].data.cid).not.toBe(cidBefore);
    });
  }
});

test("monolithicSparse keeps QEMU's layout: RGD after the descriptor, grains from a grain-aligned offset", async () => {
  const path = scratch.path("layout.vmdk");
  const file = await openFile(path, "create");
  await vmdkDriver.create(file, { size: 3 * MiB, prealloc: "off" });
  await file.close();
  const ours = readFileSync(path);
  const qemuPath = scratch.path("layout-qemu.vmdk");
  expect(qemuImg(["create", "-f", "vmdk", qemuPath, String(3 * MiB)]).code).toBe(0);
  const theirs = readFileSync(qemuPath);
  expect(ours.length).toBe(theirs.length);
  // Header bytes are identical (the descriptor differs only in its CID and extent name).
  expect(firstDifference(ours.subarray(0, SECTOR_SIZE), theirs.subarray(0, SECTOR_SIZE))).toBeUndefined();
  expect(firstDifference(ours.subarray(21 * SECTOR_SIZE), theirs.subarray(21 * SECTOR_SIZE))).toBeUndefined();
});
