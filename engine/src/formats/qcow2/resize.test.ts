import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EngineError } from "../../errors.js";
import { createImage, openImage, qemu, qemuOk, requireQemu } from "./oracle-support.js";

const dir = join("/tmp", `vdisk-qcow2-resize-${process.pid}`);
const GiB = 1024 ** 3;

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function expectQemuClean(path: string, size: number): void {
  const r = qemu("qemu-img", ["check", "-f", "qcow2", path]);
  expect(`${r.code} ${r.stdout}${r.stderr}`).toMatch(/^0 No errors were found/);
  const info = JSON.parse(qemuOk("qemu-img", ["info", "--output=json", "-f", "qcow2", path])) as Record<
    string,
    number
  >;
  expect(info["virtual-size"]).toBe(size);
}

function qemuRead(path: string, offset: number, length: number, pattern: number): void {
  const r = qemu("qemu-io", ["-f", "qcow2", "-r", "-c", `read -P ${pattern} ${offset} ${length}`, path]);
  expect(r.stdout).not.toMatch(/Pattern verification failed/);
  expect(r.code).toBe(0);
}

describe("qcow2 resize", () => {
  for (const [clusterSize, grown] of [
    [512, 100 * GiB],
    [4096, 1024 * GiB],
  ] as const) {
    it(`grows a 1 GiB image with ${clusterSize}-byte clusters to ${grown / GiB} GiB (L1 growth) and shrinks it back`, async () => {
      const path = join(dir, `resize-${clusterSize}.qcow2`);
      const img = await createImage(path, {
        size: GiB,
        prealloc: "off",
        clusterSize,
        qcow2: { compat: "1.1" },
      });
      await img.write(GiB - 5000, Buffer.alloc(5000, 0x61)); // partial last cluster: its tail must read zero later
      await img.write(1000, Buffer.alloc(70000, 0x62));
      await img.truncate(grown, { prealloc: "off" });
      await img.write(grown - 3 * clusterSize - 10, Buffer.alloc(3 * clusterSize + 10, 0x63));
      await img.close();
      expectQemuClean(path, grown);
      qemuRead(path, 1000, 70000, 0x62);
      qemuRead(path, GiB - 5000, 5000, 0x61);
      qemuRead(path, grown - 3 * clusterSize - 10, 3 * clusterSize + 10, 0x63);
      qemuRead(path, GiB, 1 << 20, 0);

      const again = await openImage(path, false);
      await again.truncate(GiB, { prealloc: "off" });
      await again.close();
      expectQemuClean(path, GiB);
      qemuRead(path, 1000, 70000, 0x62);
      qemuRead(path, GiB - 5000, 5000, 0x61);
      const leftovers = qemu("qemu-img", ["check", "--output=json", "-f", "qcow2", path]);
      expect(JSON.parse(leftovers.stdout).leaks ?? 0).toBe(0);
    });
  }

  it("refuses growth past QEMU's 32 MiB L1 limit like qemu-img resize (File too large)", async () => {
    const path = join(dir, "too-big.qcow2");
    const img = await createImage(path, { size: GiB, prealloc: "off", clusterSize: 512 });
    const err = await img.truncate(1024 * GiB, { prealloc: "off" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect((err as EngineError).code).toBe("NO_SPACE");
    expect((err as EngineError).reason).toBe("QCOW2_L1_TOO_LARGE");
    await img.close();
    expectQemuClean(path, GiB);
  });

  it("grows with each preallocation mode and refuses preallocated shrinking", async () => {
    for (const prealloc of ["metadata", "falloc", "full"] as const) {
      const path = join(dir, `grow-${prealloc}.qcow2`);
      const img = await createImage(path, { size: 3 << 20, prealloc: "off", clusterSize: 65536 });
      await img.write(100, Buffer.alloc(1000, 0x41));
      const progress: number[] = [];
      await img.truncate(20 << 20, { prealloc, onProgress: (done) => progress.push(done) });
      expect(progress.at(-1)).toBe((20 << 20) - (3 << 20));
      const err = await img.truncate(1 << 20, { prealloc }).catch((e: unknown) => e);
      expect((err as EngineError).code).toBe("UNSUPPORTED");
      const status = await img.blockStatus(10 << 20, 1 << 20);
      expect(status).toMatchObject({ allocated: true, zero: true, data: false });
      await img.close();
      expectQemuClean(path, 20 << 20);
      qemuRead(path, 100, 1000, 0x41);
      qemuRead(path, 3 << 20, 17 << 20, 0);
    }
  });
});
