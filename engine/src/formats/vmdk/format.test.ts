import { readFileSync } from "node:fs";
import { afterAll, describe, expect, test } from "vitest";
import {
  NO_PARENT_CID,
  parseDescriptor,
  replaceCid,
  serializeDescriptor,
  validateEmbeddedDescriptor,
} from "./descriptor.js";
import { GD_AT_END, parseSparseHeader, serializeSparseHeader, validateSparseHeader } from "./header.js";
import { vmdkDriver } from "./index.js";
import { makeScratchDir, openFile, pattern, qemuImg } from "./vmdk-test-helpers.js";

const scratch = makeScratchDir();
afterAll(() => scratch.remove());

const QEMU_DESCRIPTOR = `# Disk DescriptorFile
version=1
CID=3e29fa5a
parentCID=ffffffff
createType="monolithicSparse"

# Extent description
RW 6144 SPARSE "b.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "6"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
ddb.toolsVersion = "2147483647"
`;

describe("sparse header", () => {
  const fields = {
    version: 1,
    flags: 3,
    capacity: 6144n,
    granularity: 128n,
    descOffset: 1n,
    descSize: 20n,
    numGtesPerGt: 512,
    rgdOffset: 21n,
    gdOffset: 26n,
    grainOffset: 128n,
    compressAlgorithm: 0,
  };

  test("round-trips and validates to byte offsets", () => {
    const parsed = parseSparseHeader(serializeSparseHeader(fields));
    expect(parsed).toEqual({ ...fields, checkBytesIntact: true });
    const layout = validateSparseHeader(parsed, 128 * 512);
    expect(layout).toMatchObject({
      virtualSize: 6144 * 512,
      grainSize: 65536,
      gdEntries: 1,
      gdOffset: 26 * 512,
      rgdOffset: 21 * 512,
      grainOffset: 65536,
      compressed: false,
      zeroedGrain: false,
      forceReadOnly: false,
    });
  });

  test("GD_AT_END survives serialisation as the all-ones sentinel", () => {
    expect(parseSparseHeader(serializeSparseHeader({ ...fields, gdOffset: GD_AT_END })).gdOffset).toBe(
      GD_AT_END,
    );
  });
});

describe("descriptor", () => {
  test("parses QEMU's descriptor", () => {
    const d = parseDescriptor(QEMU_DESCRIPTOR);
    expect(d.cid).toBe(0x3e29fa5a);
    expect(d.parentCid).toBe(NO_PARENT_CID);
    expect(d.createType).toBe("monolithicSparse");
    expect(d.extents).toEqual([
      { access: "RW", sectors: 6144, type: "SPARSE", fileName: "b.vmdk", offset: undefined },
    ]);
    expect(d.entries.get("ddb.adapterType")).toBe("ide");
    expect(() => validateEmbeddedDescriptor(d, 6144)).not.toThrow();
  });

  test("our serialisation matches QEMU's apart from CID and name", () => {
    const ours = serializeDescriptor({
      cid: 0x3e29fa5a,
      createType: "monolithicSparse",
      capacitySectors: 6144,
      fileName: "b.vmdk",
      adapterType: "ide",
      hwVersion: "4",
      toolsVersion: "2147483647",
    });
    expect(ours).toBe(QEMU_DESCRIPTOR);
  });

  test("replaceCid changes only the CID line", () => {
    const replaced = replaceCid(QEMU_DESCRIPTOR, 0x1234);
    expect(replaced).toBe(QEMU_DESCRIPTOR.replace("CID=3e29fa5a", "CID=00001234"));
    expect(parseDescriptor(replaced).parentCid).toBe(NO_PARENT_CID);
  });
});

describe("create options", () => {
  let n = 0;
  const opened: { close(): Promise<void> }[] = [];
  const fresh = async () => {
    const file = await openFile(scratch.path(`create-${n++}.vmdk`), "create");
    opened.push(file);
    return file;
  };
  afterAll(async () => {
    for (const file of opened) await file.close();
  });

  test.each(["metadata", "falloc", "full"] as const)(
    "prealloc=%s is refused as in QEMU",
    async (prealloc) => {
      await expect(vmdkDriver.create(await fresh(), { size: 1 << 20, prealloc })).rejects.toMatchObject({
        code: "INVALID_ARGUMENT",
        reason: "VMDK_PREALLOC_UNSUPPORTED",
      });
    },
  );

  test("bad sizes and grain sizes are refused", async () => {
    await expect(vmdkDriver.create(await fresh(), { size: 1000, prealloc: "off" })).rejects.toMatchObject({
      reason: "VMDK_BAD_SIZE",
    });
    await expect(vmdkDriver.create(await fresh(), { size: 2 ** 42, prealloc: "off" })).rejects.toMatchObject({
      reason: "VMDK_SIZE_TOO_LARGE",
    });
    await expect(
      vmdkDriver.create(await fresh(), { size: 1 << 20, prealloc: "off", clusterSize: 3000 }),
    ).rejects.toMatchObject({
      reason: "VMDK_BAD_GRAIN_SIZE",
    });
  });

  test("a non-default grain size and adapter type are honoured and qemu agrees", async () => {
    const path = scratch.path("grain-4k.vmdk");
    const file = await openFile(path, "create");
    await vmdkDriver.create(file, {
      size: 8 << 20,
      prealloc: "off",
      clusterSize: 4096,
      vmdk: { adapterType: "lsilogic" },
    });
    const image = await vmdkDriver.open(file, { readOnly: false });
    await image.write(12345, pattern(10000, 3));
    await image.close();
    expect(qemuImg(["check", "-f", "vmdk", path]).code).toBe(0);
    const info = JSON.parse(qemuImg(["info", "--output=json", "-f", "vmdk", path]).stdout);
    expect(info["cluster-size"]).toBe(4096);
    expect(readFileSync(path).toString("latin1")).toContain('ddb.adapterType = "lsilogic"');
  });

  test("create streamOptimized writes an empty, complete stream that opens read-only", async () => {
    const path = scratch.path("empty-stream.vmdk");
    const file = await openFile(path, "create");
    await vmdkDriver.create(file, { size: 4 << 20, prealloc: "off", vmdk: { subformat: "streamOptimized" } });
    const image = await vmdkDriver.open(file, { readOnly: false });
    expect(image.readOnly).toBe(true);
    expect(image.details().vmdk?.subformat).toBe("streamOptimized");
    expect(await image.blockStatus(0, 4 << 20)).toEqual({
      length: 4 << 20,
      allocated: false,
      data: false,
      zero: false,
    });
    await image.close();
    expect(qemuImg(["check", "-f", "vmdk", path]).code).toBe(0);
  });
});

describe("writeZeroes without the zeroed-grain flag", () => {
  test("is a no-op on unallocated grains and refuses noFallback on allocated ones", async () => {
    const file = await openFile(scratch.path("zeroes.vmdk"), "create");
    await vmdkDriver.create(file, { size: 1 << 20, prealloc: "off" });
    const image = await vmdkDriver.open(file, { readOnly: false });
    await image.writeZeroes(0, 1 << 20, { noFallback: true });
    expect((await image.blockStatus(0, 1 << 20)).allocated).toBe(false);
    await image.write(65536, pattern(65536, 1));
    await expect(image.writeZeroes(65536, 4096, { noFallback: true })).rejects.toMatchObject({
      code: "UNSUPPORTED",
    });
    await image.writeZeroes(65536, 4096);
    const back = new Uint8Array(8192);
    await image.read(65536, back);
    expect(back.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(back.subarray(4096)).toEqual(pattern(65536, 1).subarray(4096, 8192));
    await image.close();
  });
});
