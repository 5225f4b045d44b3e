import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage } from "../../../engine/src/block-image.js";
import { discardAt, mapExtents, writeAt, writeZeroesAt } from "../../../engine/src/core/index.js";
import { rawDriver } from "../../../engine/src/formats/raw/index.js";
import type { HostFile } from "../../../engine/src/host/host-file.js";
import { openHostFile } from "../../../engine/src/host/node-file.js";
import type { Extent, PreallocMode } from "../../../engine/src/types.js";

/**
 * Oracle: vdisk's allocation map of a raw file must equal `qemu-img map --output=json -f raw` on the same
 * file, field by field. qemu-img is required: without it these tests fail, they do not skip.
 */
const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

type QemuMapEntry = Record<string, number | boolean>;

async function qemuImgMap(path: string, range?: { start: number; length: number }): Promise<QemuMapEntry[]> {
  const args = ["map", "-U", "--output=json", "-f", "raw"];
  if (range !== undefined)
    args.push("--start-offset", String(range.start), "--max-length", String(range.length));
  args.push(path);
  const { stdout } = await run("qemu-img", args);
  return JSON.parse(stdout) as QemuMapEntry[];
}

/** Shapes vdisk's extents like qemu-img's entries: the same keys, in the same order (7.2 prints no "compressed"). */
function asQemuPrints(extents: Extent[], printsCompressed: boolean): QemuMapEntry[] {
  return extents.map((e) => {
    const entry: QemuMapEntry = {
      start: e.start,
      length: e.length,
      depth: e.depth,
      present: e.present,
      zero: e.zero,
      data: e.data,
    };
    if (printsCompressed) entry.compressed = e.compressed;
    if (e.offset !== undefined) entry.offset = e.offset;
    return entry;
  });
}

async function vdiskMap(img: BlockImage, range?: { start: number; length: number }): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of mapExtents(img, range ?? {})) out.push(e);
  return out;
}

let dir: string;
let counter = 0;

beforeAll(async () => {
  const { stdout } = await run("qemu-img", ["--version"]).catch((error: unknown) => {
    throw new Error(
      `qemu-img is required for the oracle tests (Debian: apt-get install qemu-utils): ${String(error)}`,
    );
  });
  expect(stdout).toMatch(/qemu-img version/);
  await mkdir("/tmp/core-helper", { recursive: true });
  dir = await mkdtemp("/tmp/core-helper/oracle-");
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Fixture {
  path: string;
  file: HostFile;
  img: BlockImage;
}

async function fixture(size: number, prealloc: PreallocMode = "off"): Promise<Fixture> {
  const path = join(dir, `map-${++counter}.raw`);
  const file = await openHostFile(path, { readOnly: false, create: "new" });
  await rawDriver.create(file, { size, prealloc });
  const img = await rawDriver.open(file, { readOnly: false });
  return { path, file, img };
}

async function expectSameMap(
  f: Fixture,
  ranges: Array<{ start: number; length: number }> = [],
): Promise<Extent[]> {
  await f.img.flush();
  const qemu = await qemuImgMap(f.path);
  const printsCompressed = qemu.some((entry) => "compressed" in entry);
  const ours = await vdiskMap(f.img);
  expect(asQemuPrints(ours, printsCompressed)).toEqual(qemu);
  for (const range of ranges) {
    expect(asQemuPrints(await vdiskMap(f.img, range), printsCompressed)).toEqual(
      await qemuImgMap(f.path, range),
    );
  }
  return ours;
}

function bytes(length: number, value: number): Buffer {
  return Buffer.alloc(length, value);
}

describe("raw allocation map equals qemu-img map", () => {
  it("an empty sparse file", async () => {
    const f = await fixture(8 * MiB);
    const map = await expectSameMap(f, [{ start: 4096, length: MiB }]);
    expect(map).toHaveLength(1);
    await f.img.close();
  });

  it("data runs and holes, aligned and unaligned", async () => {
    const f = await fixture(8 * MiB);
    await writeAt(f.img, 0, bytes(64 * KiB, 1));
    await writeAt(f.img, MiB + 100, bytes(5000, 2));
    await writeAt(f.img, 3 * MiB, bytes(MiB, 3));
    await writeAt(f.img, 8 * MiB - 10, bytes(10, 4));
    const map = await expectSameMap(f, [
      { start: 32 * KiB, length: 2 * MiB },
      { start: MiB + 4096, length: 4096 },
      { start: 3 * MiB + 512, length: 4 * MiB },
    ]);
    expect(map.filter((e) => e.data).length).toBe(4);
    await f.img.close();
  });

  it("fallocated (unwritten) regions among data", async () => {
    const f = await fixture(8 * MiB);
    await writeAt(f.img, 0, bytes(MiB, 5));
    await f.file.allocate(MiB, 2 * MiB, true);
    await f.file.allocate(5 * MiB, 64 * KiB, true);
    await writeAt(f.img, 6 * MiB, bytes(128 * KiB, 6));
    await expectSameMap(f, [{ start: MiB - 4096, length: 3 * MiB }]);
    await f.img.close();
  });

  it("zero-written regions, with and without mayUnmap", async () => {
    const f = await fixture(8 * MiB);
    await writeAt(f.img, 0, bytes(8 * MiB, 7));
    await writeZeroesAt(f.img, MiB, MiB);
    await writeZeroesAt(f.img, 3 * MiB, MiB, { mayUnmap: true });
    await writeZeroesAt(f.img, 5 * MiB + 1000, 100 * KiB);
    await writeZeroesAt(f.img, 6 * MiB + 1000, 100 * KiB, { mayUnmap: true });
    const map = await expectSameMap(f, [{ start: 512 * KiB, length: 6 * MiB }]);
    expect(map.some((e) => e.zero)).toBe(true);
    await f.img.close();
  });

  it("writes with zero detection", async () => {
    const f = await fixture(4 * MiB);
    const data = Buffer.alloc(2 * MiB);
    data.fill(9, 0, 10 * KiB);
    data.fill(9, MiB, MiB + 1);
    data.fill(9, 2 * MiB - 4096, 2 * MiB);
    await writeAt(f.img, 512 * KiB, data, { zeroDetection: "unmap" });
    await writeAt(f.img, 3 * MiB, Buffer.alloc(256 * KiB), { zeroDetection: "on" });
    await expectSameMap(f);
    await f.img.close();
  });

  it("full and falloc preallocation, then discards", async () => {
    for (const mode of ["full", "falloc"] as const) {
      const f = await fixture(4 * MiB, mode);
      await expectSameMap(f);
      await discardAt(f.img, MiB, 512 * KiB);
      await discardAt(f.img, 2 * MiB + 100, 10 * KiB);
      await expectSameMap(f, [{ start: MiB, length: MiB }]);
      await f.img.close();
    }
  });

  it("a file whose size is not a whole number of sectors", async () => {
    const f = await fixture(MiB);
    await f.file.truncate(MiB + 1000);
    const img = await rawDriver.open(f.file, { readOnly: false });
    await img.write(MiB, bytes(1000, 1));
    await expectSameMap({ ...f, img });
    await img.close();
  });

  it("many small extents (seeded)", async () => {
    const f = await fixture(16 * MiB);
    let seed = 42;
    const next = (limit: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % limit;
    };
    for (let i = 0; i < 120; i++) {
      const offset = next(16 * MiB - 64 * KiB);
      const length = 1 + next(64 * KiB);
      switch (next(3)) {
        case 0:
          await writeAt(f.img, offset, bytes(length, 1 + next(255)));
          break;
        case 1:
          await writeZeroesAt(f.img, offset, length, { mayUnmap: next(2) === 0 });
          break;
        default:
          await discardAt(f.img, offset, length);
      }
    }
    await expectSameMap(f, [
      { start: next(8 * MiB), length: 1 + next(8 * MiB) },
      { start: next(8 * MiB), length: 1 + next(MiB) },
    ]);
    await f.img.close();
  });
});
