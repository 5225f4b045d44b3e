import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage, CreateOptions } from "../../block-image.js";
import { EngineError } from "../../errors.js";
import { createMemoryFile, type MemoryFile } from "../../host/memory-file.js";
import { EXT_FEATURE_TABLE, parseHeader } from "./header.js";
import { qcow2Driver } from "./index.js";
import { createImage, openImage, qemu, qemuOk, requireQemu } from "./oracle-support.js";

const dir = join("/tmp", `vdisk-qcow2-ops-${process.pid}`);
const MiB = 1024 * 1024;

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function memoryImage(
  opts: Partial<CreateOptions> = {},
  backing?: BlockImage,
): Promise<{ file: MemoryFile; img: BlockImage }> {
  const file = createMemoryFile();
  const create: CreateOptions = { size: 8 * MiB, prealloc: "off", clusterSize: 65536, ...opts };
  if (backing) create.backing = { image: backing, link: { fileName: "base.qcow2", format: "qcow2" } };
  await qcow2Driver.create(file, create);
  return { file, img: await qcow2Driver.open(file, { readOnly: false, ...(backing ? { backing } : {}) }) };
}

async function errorOf(p: Promise<unknown>): Promise<{ code: string; reason: string }> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(EngineError);
  return { code: (err as EngineError).code, reason: (err as EngineError).reason };
}

describe("qcow2 image operations", () => {
  it("probes qcow2 headers", () => {
    expect(qcow2Driver.probe(Buffer.from("QFI\xfb\0\0\0\x03", "latin1"))).toBe(100);
    expect(qcow2Driver.probe(Buffer.from("KDMV\0\0\0\x01", "latin1"))).toBe(0);
  });

  it("reports layer-only block status for data, zero, unallocated and backing-deferred runs", async () => {
    const base = await memoryImage();
    await base.img.write(0, Buffer.alloc(3 * 65536, 1));
    const top = await memoryImage({}, base.img);
    await top.img.write(65536, Buffer.alloc(65536, 2));
    await top.img.writeZeroes(2 * 65536, 65536);
    expect(await top.img.blockStatus(0, 8 * MiB)).toEqual({
      length: 65536,
      allocated: false,
      data: false,
      zero: false,
    });
    expect(await top.img.blockStatus(65536, MiB)).toMatchObject({
      length: 65536,
      allocated: true,
      data: true,
      zero: false,
    });
    expect(await top.img.blockStatus(2 * 65536, MiB)).toEqual({
      length: 65536,
      allocated: true,
      data: false,
      zero: true,
    });
    const noBacking = await memoryImage();
    expect(await noBacking.img.blockStatus(100, 1000)).toEqual({
      length: 1000,
      allocated: false,
      data: false,
      zero: false,
    });
    const read = Buffer.alloc(3 * 65536);
    await top.img.read(0, read);
    expect(read.subarray(0, 65536).every((b) => b === 1)).toBe(true);
    expect(read.subarray(65536, 131072).every((b) => b === 2)).toBe(true);
    expect(read.subarray(131072).every((b) => b === 0)).toBe(true);
  });

  it("writeZeroes keeps host clusters without mayUnmap and frees them with it; discard hides the backing on v3", async () => {
    const { img } = await memoryImage();
    await img.write(0, Buffer.alloc(4 * 65536, 7));
    await img.writeZeroes(0, 65536);
    expect(await img.blockStatus(0, 65536)).toMatchObject({
      allocated: true,
      zero: true,
      data: false,
      hostOffset: expect.any(Number),
    });
    await img.writeZeroes(65536, 65536, { mayUnmap: true });
    expect((await img.blockStatus(65536, 65536)).hostOffset).toBeUndefined();
    await img.discard(2 * 65536, 65536);
    expect(await img.blockStatus(2 * 65536, 65536)).toMatchObject({ allocated: false });

    const base = await memoryImage();
    await base.img.write(0, Buffer.alloc(65536, 9));
    const top = await memoryImage({}, base.img);
    await top.img.discard(0, 65536);
    const out = Buffer.alloc(65536, 1);
    await top.img.read(0, out);
    expect(out.every((b) => b === 0)).toBe(true);
  });

  it("whole-cluster zero writes on a thin v3 image record zero clusters (Allocate metadata), as QEMU does", async () => {
    const { img } = await memoryImage();
    await img.writeZeroes(65536, 3 * 65536, { mayUnmap: false });
    expect(await img.blockStatus(65536, 3 * 65536)).toEqual({
      length: 3 * 65536,
      allocated: true,
      data: false,
      zero: true,
    });
    expect(await img.blockStatus(0, 65536)).toMatchObject({ allocated: false });
  });

  it("v2 with a backing file cannot zero without data: UNSUPPORTED with noFallback, zeros written otherwise", async () => {
    const base = await memoryImage({ qcow2: { compat: "0.10" } });
    await base.img.write(0, Buffer.alloc(65536, 9));
    const top = await memoryImage({ qcow2: { compat: "0.10" } }, base.img);
    expect(await errorOf(top.img.writeZeroes(0, 65536, { noFallback: true }))).toMatchObject({
      code: "UNSUPPORTED",
    });
    await top.img.writeZeroes(0, 65536);
    const out = Buffer.alloc(65536, 1);
    await top.img.read(0, out);
    expect(out.every((b) => b === 0)).toBe(true);
    expect(await top.img.blockStatus(0, 65536)).toMatchObject({ allocated: true, data: true });
  });

  it("partial-cluster zero writes with noFallback fail only when data would be needed", async () => {
    const { img } = await memoryImage();
    await img.writeZeroes(100, 1000, { noFallback: true }); // already reads as zeros
    await img.write(0, Buffer.alloc(4096, 5));
    expect(await errorOf(img.writeZeroes(100, 1000, { noFallback: true }))).toMatchObject({
      code: "UNSUPPORTED",
    });
    await img.writeZeroes(100, 1000);
    const out = Buffer.alloc(4096);
    await img.read(0, out);
    expect(out.subarray(100, 1100).every((b) => b === 0)).toBe(true);
    expect(out[99]).toBe(5);
    expect(out[1100]).toBe(5);
  });

  it("read-only images refuse writes", async () => {
    const { file } = await memoryImage();
    const ro = await qcow2Driver.open(file, { readOnly: true });
    expect(await errorOf(ro.write(0, Buffer.alloc(1)))).toMatchObject({ code: "READ_ONLY" });
  });

  it("requires the backing image the header names", async () => {
    const base = await memoryImage();
    const top = await memoryImage({}, base.img);
    await top.img.flush();
    expect(await errorOf(qcow2Driver.open(top.file, { readOnly: true }))).toMatchObject({
      reason: "QCOW2_BACKING_REQUIRED",
    });
    const inspect = await qcow2Driver.open(top.file, { readOnly: true, allowMissingBacking: true });
    expect(inspect.details().qcow2).toMatchObject({
      backingFile: "base.qcow2",
      backingFormat: "qcow2",
      version: 3,
    });
    expect(await errorOf(inspect.read(0, Buffer.alloc(512)))).toMatchObject({
      reason: "QCOW2_BACKING_REQUIRED",
    });
    const rw = await qcow2Driver.open(top.file, { readOnly: false, allowMissingBacking: true });
    expect(await errorOf(rw.write(0, Buffer.alloc(512)))).toMatchObject({ reason: "QCOW2_BACKING_REQUIRED" });
    expect((await rw.check({ repair: "none" })).corruptions).toBe(0);
  });

  it.each([
    [{ clusterSize: 1000 }, "QCOW2_BAD_CLUSTER_SIZE"],
    [{ clusterSize: 4 * MiB }, "QCOW2_BAD_CLUSTER_SIZE"],
    [{ qcow2: { refcountBits: 3 } }, "QCOW2_BAD_REFCOUNT_BITS"],
    [{ qcow2: { compat: "0.10" as const, lazyRefcounts: true } }, "QCOW2_LAZY_NEEDS_V3"],
    [{ qcow2: { extendedL2: true }, clusterSize: 4096 }, "QCOW2_BAD_EXTENDED_L2"],
    [{ size: -1 }, "QCOW2_BAD_SIZE"],
  ])("create rejects %j", async (opts, reason) => {
    expect(
      await errorOf(qcow2Driver.create(createMemoryFile(), { size: MiB, prealloc: "off", ...opts })),
    ).toMatchObject({
      code: "INVALID_ARGUMENT",
      reason,
    });
  });

  it("cancelled preallocation stops between steps and leaves a valid image", async () => {
    const path = join(dir, "cancel.qcow2");
    const controller = new AbortController();
    const seen: number[] = [];
    const err = await errorOf(
      createImage(path, {
        size: 1024 * MiB,
        prealloc: "metadata",
        signal: controller.signal,
        onProgress: (done) => {
          seen.push(done);
          controller.abort();
        },
      }),
    );
    expect(err.code).toBe("CANCELLED");
    expect(seen).toEqual([64 * MiB]); // the first of 16 steps
    expect(qemuOk("qemu-img", ["check", path])).toMatch(/No errors were found/);
  });

  it("setBackingLink rewrites name and format in one header update, keeping other extensions", async () => {
    const base = join(dir, "link-base.qcow2");
    const other = join(dir, "link-other.qcow2");
    const top = join(dir, "link-top.qcow2");
    qemuOk("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    qemuOk("qemu-img", ["create", "-q", "-f", "qcow2", other, "1M"]);
    qemuOk("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "link-base.qcow2", "-F", "qcow2", top]);
    const before = parseHeader(readFileSync(top).subarray(0, 65536), 1 << 20);
    const baseImg = await openImage(base, true);
    const otherImg = await openImage(other, true);
    const img = await openImage(top, false, baseImg);
    await img.setBackingLink({ fileName: "link-other.qcow2", format: "qcow2" }, otherImg);
    expect(img.backing).toBe(otherImg);
    await img.close();
    const info = JSON.parse(qemuOk("qemu-img", ["info", "--output=json", top])) as Record<string, string>;
    expect(info["backing-filename"]).toBe("link-other.qcow2");
    expect(info["backing-filename-format"]).toBe("qcow2");
    const img2 = await openImage(top, false, otherImg);
    await img2.setBackingLink(undefined, undefined);
    await img2.close();
    const after = JSON.parse(qemuOk("qemu-img", ["info", "--output=json", top])) as Record<string, string>;
    expect(after["backing-filename"]).toBeUndefined();
    const final = parseHeader(readFileSync(top).subarray(0, 65536), 1 << 20);
    expect(before.extensions.some((e) => e.type === EXT_FEATURE_TABLE)).toBe(true);
    expect(final.extensions).toEqual(before.extensions.filter((e) => e.type !== 0xe2792aca));
    expect(qemu("qemu-img", ["check", top]).code).toBe(0);
    await baseImg.close();
    await otherImg.close();
  });

  it("an I/O error at any point of a workload leaves only leaks (never corruption)", async () => {
    const workload = async (img: BlockImage) => {
      await img.write(0, Buffer.alloc(100000, 1));
      await img.writeZeroes(65536, 65536);
      await img.write(3 * MiB + 17, Buffer.alloc(70000, 2));
      await img.flush();
      await img.discard(0, 65536);
      await img.write(6 * MiB, Buffer.alloc(65536 * 3, 3));
      await img.truncate(20 * MiB, { prealloc: "metadata" });
      await img.flush();
    };
    let completed = false;
    for (let nth = 1; !completed && nth < 200; nth++) {
      const { file, img } = await memoryImage({ clusterSize: 4096 });
      file.injectFault({ op: "write", nth, error: "EIO", persistent: true });
      try {
        await workload(img);
        completed = true;
      } catch (err) {
        expect(err).toBeInstanceOf(EngineError);
      }
      file.clearFaults();
      const path = join(dir, `fault-${nth}.qcow2`);
      writeFileSync(path, file.contents());
      const check = qemu("qemu-img", ["check", "--output=json", path]);
      expect([0, 3]).toContain(check.code);
      const reopened = await qcow2Driver.open(createMemoryFile({ data: file.contents() }), {
        readOnly: false,
      });
      const repaired = await reopened.check({ repair: "leaks" });
      expect(repaired.corruptions).toBe(0);
      expect(repaired.leaks).toBe(0);
    }
    expect(completed).toBe(true);
  });
});

describe("qcow2 resize over a longer backing image", () => {
  for (const compat of ["1.1", "0.10"] as const) {
    it(`grown area reads zeros, not the backing's data (compat ${compat})`, async () => {
      const base = await memoryImage({ size: 8 * MiB, qcow2: { compat } });
      await base.img.write(0, Buffer.alloc(8 * MiB, 0x42));
      const top = await memoryImage({ size: 2 * MiB + 1000, qcow2: { compat } }, base.img);
      await top.img.truncate(6 * MiB, { prealloc: "off" });
      const out = Buffer.alloc(6 * MiB);
      await top.img.read(0, out);
      expect(out.subarray(0, 2 * MiB + 1000).every((b) => b === 0x42)).toBe(true);
      expect(out.subarray(2 * MiB + 1000).every((b) => b === 0)).toBe(true);
      expect((await top.img.check({ repair: "none" })).corruptions).toBe(0);
    });
  }
});

describe("qcow2 refcount structure growth", () => {
  it("grows the refcount table several times (self-describing blocks) and stays qemu-img clean", async () => {
    const path = join(dir, "reftable-growth.qcow2");
    // 512-byte clusters with 64-bit refcounts: one block covers 64 clusters, the first table 4096 (2 MiB).
    const img = await createImage(path, {
      size: 64 * MiB,
      prealloc: "off",
      clusterSize: 512,
      qcow2: { refcountBits: 64 },
    });
    const data = Buffer.alloc(MiB);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    for (let i = 0; i < 6; i++) await img.write(i * MiB, data);
    await img.write(40 * MiB + 3, data.subarray(0, 300000));
    await img.close();
    const header = parseHeader(readFileSync(path).subarray(0, 512), 64 * MiB);
    expect(header.refcountTableClusters).toBeGreaterThanOrEqual(4); // 1 → 2 → 4
    expect(qemuOk("qemu-img", ["check", path])).toMatch(/No errors were found/);
    const r = qemu("qemu-io", ["-f", "qcow2", "-r", "-c", "read -v 1000 16", path]);
    expect(r.stdout).toMatch(/58 5f 66 6d 74 7b 82 89 90 97 9e a5 ac b3 ba c1/);
  });
});
