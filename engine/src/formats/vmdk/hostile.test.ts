import { readFileSync, writeFileSync } from "node:fs";
import { deflateSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { vmdkDriver } from "./index.js";
import { writeU16, writeU32, writeU64 } from "./le.js";
import { inspectVmdk } from "./metadata.js";
import { makeScratchDir, openFile, pattern } from "./vmdk-test-helpers.js";

// Every case is a self-contained file: the driver only ever gets the HostFile it was handed (it has no
// path and no way to open anything else), so "never open another file" holds by construction; these
// tests pin the typed error and that rejection happens before any table-sized allocation or read.

const scratch = makeScratchDir();
afterAll(() => scratch.remove());

const SIZE = 1024 * 1024; // 2048 sectors
let sparse: Uint8Array; // a valid vdisk monolithicSparse image with one data grain
let stream: Uint8Array; // a valid vdisk streamOptimized image with one grain

beforeAll(async () => {
  const file = await openFile(scratch.path("base.vmdk"), "create");
  await vmdkDriver.create(file, { size: SIZE, prealloc: "off" });
  const image = await vmdkDriver.open(file, { readOnly: false });
  await image.write(0, pattern(65536, 1));
  await image.close();
  sparse = new Uint8Array(readFileSync(scratch.path("base.vmdk")));
  const { createStreamOptimizedWriter } = await import("./stream-writer.js");
  const chunks: Uint8Array[] = [];
  const writer = createStreamOptimizedWriter({ size: SIZE, write: async (b) => void chunks.push(b.slice()) });
  await writer.writeGrain(0, pattern(65536, 2));
  await writer.finish();
  stream = new Uint8Array(Buffer.concat(chunks));
});

let counter = 0;
async function openBytes(bytes: Uint8Array, readOnly = true) {
  const path = scratch.path(`case-${counter++}.vmdk`);
  writeFileSync(path, bytes);
  const file = await openFile(path, readOnly ? "read" : "write");
  try {
    return await vmdkDriver.open(file, { readOnly });
  } catch (err) {
    await file.close(); // the caller owns the file when open fails
    throw err;
  }
}

async function expectRejected(bytes: Uint8Array, code: string, reason: string): Promise<void> {
  const started = performance.now();
  await expect(openBytes(bytes)).rejects.toMatchObject({ name: "EngineError", code, reason });
  expect(performance.now() - started).toBeLessThan(2000);
  // The pure inspector reaches the same verdict from the same bytes.
  expect(() => inspectVmdk(bytes, bytes.length, bytes.subarray(Math.max(0, bytes.length - 1536)))).toThrow(
    expect.objectContaining({ code, reason }),
  );
}

function withDescriptor(text: string): Uint8Array {
  const copy = sparse.slice();
  copy.fill(0, 512, 512 + 20 * 512);
  copy.set(new TextEncoder().encode(text), 512);
  return copy;
}

const descriptor = (opts: {
  createType?: string;
  extents?: string[];
  extra?: string[];
  parentCID?: string;
}) =>
  [
    "# Disk DescriptorFile",
    "version=1",
    "CID=12345678",
    `parentCID=${opts.parentCID ?? "ffffffff"}`,
    `createType="${opts.createType ?? "monolithicSparse"}"`,
    ...(opts.extra ?? []),
    ...(opts.extents ?? ['RW 2048 SPARSE "disk.vmdk"']),
    'ddb.adapterType = "ide"',
    "",
  ].join("\n");

function patched(base: Uint8Array, edit: (b: Uint8Array) => void): Uint8Array {
  const copy = base.slice();
  edit(copy);
  return copy;
}

describe("descriptor-level hostility (reliability rows F1–F6, A1)", () => {
  test("a text-only descriptor file (monolithicFlat) is refused", async () => {
    const text = descriptor({ createType: "monolithicFlat", extents: ['RW 2048 FLAT "disk-flat.vmdk" 0'] });
    await expectRejected(new TextEncoder().encode(text), "UNSUPPORTED", "VMDK_DESCRIPTOR_FILE");
  });

  test("a text-only twoGbMaxExtentSparse descriptor is refused", async () => {
    const text = descriptor({
      createType: "twoGbMaxExtentSparse",
      extents: ['RW 2048 SPARSE "disk-s001.vmdk"'],
    });
    await expectRejected(new TextEncoder().encode(text), "UNSUPPORTED", "VMDK_DESCRIPTOR_FILE");
  });

  test.each(["monolithicFlat", "twoGbMaxExtentSparse", "vmfsSparse", "seSparse", "custom"])(
    "embedded createType %s is refused",
    async (createType) => {
      await expectRejected(
        withDescriptor(descriptor({ createType })),
        "UNSUPPORTED",
        "VMDK_UNSUPPORTED_CREATE_TYPE",
      );
    },
  );

  test.each([
    ["absolute path", 'RW 2048 SPARSE "/etc/passwd"'],
    ["relative path", 'RW 2048 SPARSE "../other/disk.vmdk"'],
    ["flat extent", 'RW 2048 FLAT "disk-flat.vmdk" 0'],
    ["vmfs extent", 'RW 2048 VMFS "disk-flat.vmdk"'],
    ["windows path", 'RW 2048 SPARSE "C:\\\\disks\\\\x.vmdk"'],
    ["offset on a sparse extent", 'RW 2048 SPARSE "disk.vmdk" 7'],
  ])("an extent naming another file (%s) is refused", async (_name, line) => {
    await expectRejected(
      withDescriptor(descriptor({ extents: [line] })),
      "UNSUPPORTED",
      "VMDK_EXTERNAL_EXTENT",
    );
  });

  test("a second extent is refused", async () => {
    const extents = ['RW 1024 SPARSE "disk.vmdk"', 'RW 1024 SPARSE "disk-2.vmdk"'];
    await expectRejected(withDescriptor(descriptor({ extents })), "UNSUPPORTED", "VMDK_EXTERNAL_EXTENT");
  });

  test("parent links are refused", async () => {
    await expectRejected(
      withDescriptor(descriptor({ parentCID: "0badcafe" })),
      "UNSUPPORTED",
      "VMDK_PARENT_LINK",
    );
    const hint = descriptor({ extra: ['parentFileNameHint="/var/lib/images/base.vmdk"'] });
    await expectRejected(withDescriptor(hint), "UNSUPPORTED", "VMDK_PARENT_LINK");
  });

  test("unknown line kinds, control characters and extent size mismatches are refused", async () => {
    await expectRejected(
      withDescriptor(descriptor({ extra: ["!!! not a descriptor line"] })),
      "CORRUPT",
      "VMDK_BAD_DESCRIPTOR",
    );
    await expectRejected(
      withDescriptor(descriptor({ extra: ["key=\u0007bell"] })),
      "CORRUPT",
      "VMDK_BAD_DESCRIPTOR",
    );
    await expectRejected(
      withDescriptor(descriptor({ extents: ['RW 4096 SPARSE "disk.vmdk"'] })),
      "CORRUPT",
      "VMDK_EXTENT_SIZE_MISMATCH",
    );
    await expectRejected(withDescriptor(descriptor({ extents: [] })), "CORRUPT", "VMDK_BAD_DESCRIPTOR");
  });

  test("a capacity-0 extent deferring to its descriptor is refused", async () => {
    await expectRejected(
      patched(sparse, (b) => writeU64(b, 12, 0)),
      "UNSUPPORTED",
      "VMDK_DESCRIPTOR_FILE",
    );
  });
});

describe("header-level hostility (rows A4, F7–F9)", () => {
  test("bad magic, too small, and VMDK3 are refused", async () => {
    await expectRejected(
      patched(sparse, (b) => b.set([0x51, 0x46, 0x49, 0xfb], 0)),
      "CORRUPT",
      "VMDK_BAD_MAGIC",
    );
    await expectRejected(new Uint8Array([0x4b, 0x44]), "CORRUPT", "VMDK_TOO_SMALL");
    await expectRejected(
      patched(sparse, (b) => b.set([0x43, 0x4f, 0x57, 0x44], 0)),
      "UNSUPPORTED",
      "VMDK_UNSUPPORTED_VERSION",
    );
  });

  test("huge capacity in a tiny file is refused without allocating its tables", async () => {
    await expectRejected(
      patched(sparse, (b) => writeU64(b, 12, 2n ** 40n)),
      "CORRUPT",
      "VMDK_TABLE_OUT_OF_RANGE",
    );
    await expectRejected(
      patched(sparse, (b) => writeU64(b, 12, 2n ** 50n)),
      "CORRUPT",
      "VMDK_BAD_CAPACITY",
    );
    // Tiny grains and a huge capacity: a grain directory beyond QEMU's 32 Mi-entry limit.
    const tinyGrains = patched(sparse, (b) => {
      writeU64(b, 12, 2n ** 43n);
      writeU64(b, 20, 1n);
      writeU32(b, 44, 1);
      writeU64(b, 64, 0n);
    });
    await expectRejected(tinyGrains, "CORRUPT", "VMDK_GD_TOO_LARGE");
  });

  test.each([0n, 3n, 0x400000n])("granularity %s is refused", async (granularity) => {
    await expectRejected(
      patched(sparse, (b) => writeU64(b, 20, granularity)),
      "CORRUPT",
      "VMDK_BAD_GRANULARITY",
    );
  });

  test("oversized grain tables, unknown versions, damaged check bytes and truncation are refused", async () => {
    await expectRejected(
      patched(sparse, (b) => writeU32(b, 44, 1024)),
      "CORRUPT",
      "VMDK_GT_TOO_LARGE",
    );
    await expectRejected(
      patched(sparse, (b) => writeU32(b, 4, 4)),
      "UNSUPPORTED",
      "VMDK_UNSUPPORTED_VERSION",
    );
    await expectRejected(
      patched(sparse, (b) => b.set([0x0a, 0x20, 0x0a, 0x0a], 73)),
      "CORRUPT",
      "VMDK_BAD_CHECK_BYTES",
    );
    await expectRejected(
      patched(sparse, (b) => writeU16(b, 77, 7)),
      "UNSUPPORTED",
      "VMDK_UNSUPPORTED_COMPRESSION",
    );
    await expectRejected(sparse.subarray(0, 60 * 1024), "CORRUPT", "VMDK_TRUNCATED");
    await expectRejected(
      patched(sparse, (b) => writeU64(b, 56, 2n ** 30n)),
      "CORRUPT",
      "VMDK_TABLE_OUT_OF_RANGE",
    );
  });

  test("a grain directory entry pointing past EOF is refused at open", async () => {
    const gdOffset = 26 * 512; // QEMU's layout for a 1 MiB image
    await expect(openBytes(patched(sparse, (b) => writeU32(b, gdOffset, 0x7fffffff)))).rejects.toMatchObject({
      code: "CORRUPT",
      reason: "VMDK_TABLE_OUT_OF_RANGE",
    });
  });

  test("a streamOptimized footer without EOS, or pointing at another footer, is refused", async () => {
    await expectRejected(
      patched(stream, (b) => writeU32(b, b.length - 512 + 12, 3)),
      "CORRUPT",
      "VMDK_BAD_FOOTER",
    );
    await expectRejected(stream.subarray(0, stream.length - 512), "CORRUPT", "VMDK_BAD_FOOTER");
    const footerHeader = stream.length - 1024;
    await expectRejected(
      patched(stream, (b) => writeU64(b, footerHeader + 56, 2n ** 64n - 1n)),
      "CORRUPT",
      "VMDK_BAD_FOOTER",
    );
  });
});

describe("grain-level hostility (row F10)", () => {
  const gtOfStream = (b: Uint8Array) => {
    const view = Buffer.from(b.buffer, b.byteOffset, b.length);
    const gdSector = Number(view.readBigUInt64LE(b.length - 1024 + 56));
    return view.readUInt32LE(gdSector * 512) * 512;
  };

  test("a compressed grain whose size field is huge is refused on read", async () => {
    const bad = patched(stream, (b) => {
      const grainAt = Buffer.from(b.buffer).readUInt32LE(gtOfStream(b)) * 512;
      writeU32(b, grainAt + 8, 0x7fffffff);
    });
    const image = await openBytes(bad);
    await expect(image.read(0, new Uint8Array(512))).rejects.toMatchObject({
      code: "CORRUPT",
      reason: "VMDK_BAD_GRAIN_MARKER",
    });
    expect((await image.check({ repair: "none" })).corruptions).toBe(1);
    await image.close();
  });

  test("a compressed grain that inflates past the grain size is cut off and refused", async () => {
    const bomb = deflateSync(new Uint8Array(1024 * 1024)); // ~1 KiB that inflates to 1 MiB
    const bad = patched(stream, (b) => {
      const grainAt = Buffer.from(b.buffer).readUInt32LE(gtOfStream(b)) * 512;
      writeU32(b, grainAt + 8, bomb.length);
      b.set(bomb, grainAt + 12);
    });
    const image = await openBytes(bad);
    await expect(image.read(0, new Uint8Array(512))).rejects.toMatchObject({
      code: "CORRUPT",
      reason: "VMDK_BAD_COMPRESSED_GRAIN",
    });
    await image.close();
  });

  test("grain table entries pointing into metadata or past EOF are corruption", async () => {
    const gtOffset = 22 * 512; // the redundant GT (after the RGD at 21); the primary GT follows the GD at 26
    const bad = patched(sparse, (b) => {
      writeU32(b, 27 * 512 + 4, 3); // grain 1 -> sector 3 (inside the descriptor)
      writeU32(b, gtOffset + 4, 3);
      writeU32(b, 27 * 512 + 8, 0x00ffffff); // grain 2 -> far past EOF
      writeU32(b, gtOffset + 8, 0x00ffffff);
    });
    const image = await openBytes(bad);
    await expect(image.read(65536, new Uint8Array(512))).rejects.toMatchObject({
      reason: "VMDK_GRAIN_OUT_OF_RANGE",
    });
    await expect(image.read(131072, new Uint8Array(512))).rejects.toMatchObject({
      reason: "VMDK_GRAIN_OUT_OF_RANGE",
    });
    const result = await image.check({ repair: "none" });
    // grain 1 (overlapping the metadata and grain 0), grain 0 (overlapped), grain 2 (past EOF)
    expect(result.corruptions).toBe(3);
    expect(result.messages.join("\n")).toMatch(/points after EOF/);
    expect(result.messages.join("\n")).toMatch(/overlaps descriptor/);
    await expect(image.check({ repair: "all" })).rejects.toMatchObject({ code: "UNSUPPORTED" });
    await image.close();
  });

  test("two grain table entries sharing one grain are reported", async () => {
    const bad = patched(sparse, (b) => {
      const first = Buffer.from(b.buffer).readUInt32LE(27 * 512);
      writeU32(b, 27 * 512 + 12, first);
      writeU32(b, 22 * 512 + 12, first);
    });
    const image = await openBytes(bad);
    const result = await image.check({ repair: "none" });
    expect(result.corruptions).toBe(2); // both entries claiming the grain
    expect(result.messages[0]).toMatch(/overlaps grain for sector 0/);
    await image.close();
  });
});

describe("read-only rules", () => {
  test("version 3 without compression opens read-only (VMware changed-block tracking)", async () => {
    const image = await openBytes(
      patched(sparse, (b) => writeU32(b, 4, 3)),
      false,
    );
    expect(image.readOnly).toBe(true);
    await expect(image.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: "READ_ONLY" });
    await image.close();
  });

  test("resize and backing links are unsupported; a same-size truncate is a no-op", async () => {
    const image = await openBytes(sparse, false);
    await image.truncate(SIZE, { prealloc: "off" });
    await expect(image.truncate(2 * SIZE, { prealloc: "off" })).rejects.toMatchObject({
      code: "UNSUPPORTED",
    });
    await expect(image.setBackingLink({ fileName: "x", format: "vmdk" }, undefined)).rejects.toMatchObject({
      code: "UNSUPPORTED",
    });
    await image.close();
  });
});

describe("upload inspector", () => {
  test("asks for more bytes instead of guessing when the descriptor or footer is missing", () => {
    expect(() => inspectVmdk(sparse.subarray(0, 512), sparse.length)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", reason: "VMDK_NEED_MORE_BYTES" }),
    );
    expect(() => inspectVmdk(stream.subarray(0, 64 * 1024), stream.length)).toThrow(
      expect.objectContaining({ reason: "VMDK_NEED_MORE_BYTES" }),
    );
    expect(inspectVmdk(sparse.subarray(0, 64 * 1024), sparse.length)).toMatchObject({
      subformat: "monolithicSparse",
      virtualSize: SIZE,
      version: 1,
      zeroedGrain: false,
    });
  });
});
