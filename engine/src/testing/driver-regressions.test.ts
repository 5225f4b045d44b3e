import { describe, expect, it } from "vitest";
import { flushImage, readAt, writeAt } from "../core/index.js";
import { EngineError } from "../errors.js";
import { qcow2Driver } from "../formats/qcow2/index.js";
import { vmdkDriver } from "../formats/vmdk/index.js";
import { createMemoryFile } from "../host/memory-file.js";
import { createImageBytes, qcow2Variant, qemuCheck, vmdkVariant } from "./images.js";
import { createPowerLossFile } from "./power-loss-file.js";

/** Regression tests for the driver bugs the fault matrix and the power-loss simulation found. */

async function caught(p: Promise<unknown>): Promise<EngineError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof EngineError) return err;
    throw err;
  }
  throw new Error("expected an EngineError");
}

describe("qcow2", () => {
  it("a refcount block created while the refcount table grows has its own refcount on disk before the table points at it", async () => {
    // v2, 512-byte clusters: the first refcount table covers 8 MiB of host file, so writing 8 MiB of
    // data grows it in the middle of the allocation. The data write then fails: before the fix the
    // already-switched table referenced a refcount block whose own refcount was still only in memory.
    const v = qcow2Variant("v2-512", { size: 8 << 20, clusterSize: 512, version: 2 });
    const file = createMemoryFile({ data: await createImageBytes(v) });
    const img = await qcow2Driver.open(file, { readOnly: false });
    file.injectFault({ op: "write", point: "data_write", error: "EIO" });
    expect((await caught(writeAt(img, 0, new Uint8Array(8 << 20).fill(7)))).code).toBe("IO");
    const q = qemuCheck(file.contents(), "qcow2");
    expect([0, 3], q.output).toContain(q.code);
  });

  it("after a host write failure the handle stops writing; the image on disk is intact and reopens", async () => {
    const v = qcow2Variant("v3-4k", { size: 4 << 20, clusterSize: 4096, version: 3 });
    const file = createMemoryFile({ data: await createImageBytes(v) });
    const img = await qcow2Driver.open(file, { readOnly: false });
    await writeAt(img, 0, new Uint8Array(8192).fill(1));
    await flushImage(img);
    file.injectFault({ op: "write", point: "l2_alloc", error: "ENOSPC" });
    await writeAt(img, 3 << 20, new Uint8Array(4096).fill(2)); // the new L2 table stays in memory until the flush
    expect((await caught(flushImage(img))).code).toBe("NO_SPACE");
    // The fault was one-shot, but the handle refuses further writes with the first failure's code.
    const again = await caught(writeAt(img, 0, new Uint8Array(512).fill(3)));
    expect(again).toMatchObject({ code: "NO_SPACE", reason: "QCOW2_WRITE_FAILED" });
    expect((await caught(flushImage(img))).reason).toBe("QCOW2_WRITE_FAILED");
    expect(Buffer.from(await readAt(img, 0, 8192)).every((b) => b === 1)).toBe(true); // reads still work
    await img.close();
    const reopened = await qcow2Driver.open(createMemoryFile({ data: file.contents() }), { readOnly: false });
    expect((await reopened.check({ repair: "none" })).corruptions).toBe(0);
    await writeAt(reopened, 0, new Uint8Array(512).fill(4));
    await reopened.close();
  });
});

describe("vmdk", () => {
  it("new grains are durable before the grain table points at them", async () => {
    const v = vmdkVariant("vmdk", { size: 4 << 20, grainSize: 4096 });
    const file = createPowerLossFile({ data: await createImageBytes(v) });
    const img = await vmdkDriver.open(file, { readOnly: false });
    await writeAt(img, 0, new Uint8Array(4096).fill(1));
    await flushImage(img);
    await writeAt(img, 1 << 20, new Uint8Array(3 * 4096).fill(2)); // three new grains, not flushed
    expect(file.pendingCount).toBe(2); // only the two grain-table copies are still in flight
    for (let seed = 0; seed < 16; seed++) {
      const after = createMemoryFile({ data: await file.crash({ mode: seed < 2 ? "drop" : "torn", seed }) });
      const reopened = await vmdkDriver.open(after, { readOnly: true });
      expect((await reopened.check({ repair: "none" })).corruptions).toBe(0);
      const grain = Buffer.from(await readAt(reopened, 1 << 20, 4096));
      expect(grain.every((b) => b === 2) || grain.every((b) => b === 0)).toBe(true);
      await reopened.close();
    }
  });

  it("a redundant grain table lagging behind the primary is a warning; conflicting entries are corruption", async () => {
    const v = vmdkVariant("vmdk", { size: 4 << 20, grainSize: 4096 });
    const bytes = Buffer.from(await createImageBytes(v));
    const file = createMemoryFile({ data: bytes });
    const img = await vmdkDriver.open(file, { readOnly: false });
    await writeAt(img, 0, new Uint8Array(4096).fill(1));
    await img.close();
    const written = Buffer.from(file.contents());
    const rgd = Number(written.readBigUInt64LE(48)) * 512;
    const redundantTable = written.readUInt32LE(rgd) * 512;
    const checkWith = async (entry: number) => {
      const copy = Buffer.from(written);
      copy.writeUInt32LE(entry, redundantTable);
      const opened = await vmdkDriver.open(createMemoryFile({ data: copy, readOnly: true }), {
        readOnly: true,
      });
      const result = await opened.check({ repair: "none" });
      await opened.close();
      return result;
    };
    const lagging = await checkWith(0);
    expect(lagging.corruptions).toBe(0);
    expect(lagging.messages.join("\n")).toMatch(/interrupted update/);
    const primary = written.readUInt32LE(Number(written.readBigUInt64LE(56)) * 512);
    const conflicting = await checkWith(written.readUInt32LE(primary * 512) + 8);
    expect(conflicting.corruptions).toBeGreaterThan(0);
  });
});
