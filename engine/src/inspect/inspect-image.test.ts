import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { HostFile } from "../host/host-file.js";
import { createMemoryFile, type MemoryFile } from "../host/memory-file.js";
import { openHostFile } from "../host/node-file.js";
import type { FormatName } from "../types.js";
import { inspectImage } from "./inspect-image.js";
import { expectEngineError, makeScratch, ok, patchedCopy, replaceText } from "./io-test-support.js";

const scratch = makeScratch("inspect");
afterAll(() => scratch.remove());
const p = (name: string) => scratch.path(name);

const MiB = 1024 * 1024;
const QUOTA = { maxVirtualSize: 1024 ** 4 }; // 1 TiB

/** Replaces a file an image names by a FIFO: opening it would block, so a test that opened it would hang. */
function trap(path: string): void {
  rmSync(path, { force: true });
  execFileSync("mkfifo", [path]);
}

beforeAll(() => {
  ok("qemu-img", ["--version"]);
  // Accepted inputs, made by QEMU.
  ok("qemu-img", ["create", "-f", "raw", p("data.raw"), "4M"]);
  ok("qemu-io", ["-f", "raw", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x22 2M 128k", p("data.raw")]);
  ok("qemu-img", ["create", "-f", "qcow2", "-o", "compat=0.10", p("v2.qcow2"), "4M"]);
  ok("qemu-img", ["create", "-f", "qcow2", p("v3.qcow2"), "4M"]);
  for (const f of ["v2.qcow2", "v3.qcow2"]) {
    ok("qemu-io", ["-f", "qcow2", "-c", "write -P 0x33 64k 64k", "-c", "write -z 1M 64k", p(f)]);
  }
  ok("qemu-img", ["convert", "-c", "-f", "raw", "-O", "qcow2", p("data.raw"), p("compressed.qcow2")]);
  ok("qemu-img", ["convert", "-f", "raw", "-O", "vmdk", p("data.raw"), p("sparse.vmdk")]);
  ok("qemu-img", [
    "convert",
    "-f",
    "raw",
    "-O",
    "vmdk",
    "-o",
    "subformat=streamOptimized",
    p("data.raw"),
    p("stream.vmdk"),
  ]);
  ok("qemu-img", ["create", "-f", "qcow2", p("empty.qcow2"), "1M"]);

  // Hostile inputs: QEMU's own features that name other files...
  ok("qemu-img", ["create", "-f", "qcow2", p("base.qcow2"), "4M"]);
  ok("qemu-img", ["create", "-f", "qcow2", "-b", p("base.qcow2"), "-F", "qcow2", p("overlay.qcow2")]);
  trap(p("base.qcow2"));
  ok("qemu-img", [
    "create",
    "-f",
    "qcow2",
    "-o",
    `data_file=${p("external.raw")}`,
    p("datafile.qcow2"),
    "4M",
  ]);
  trap(p("external.raw"));
  ok("qemu-img", ["create", "-f", "vmdk", "-o", "subformat=monolithicFlat", p("flat.vmdk"), "4M"]);
  trap(p("flat-flat.vmdk"));
  ok("qemu-img", ["create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", p("split.vmdk"), "4M"]);
  trap(p("split-s001.vmdk"));
  ok("qemu-img", ["create", "-f", "vmdk", p("parent.vmdk"), "4M"]);
  ok("qemu-img", ["create", "-f", "vmdk", "-b", p("parent.vmdk"), "-F", "vmdk", p("child.vmdk")]);
  trap(p("parent.vmdk"));
  ok("qemu-img", ["create", "-f", "qcow", p("v1.qcow"), "4M"]);
  ok("qemu-img", ["create", "-f", "qcow2", p("snap.qcow2"), "4M"]);
  ok("qemu-img", ["snapshot", "-c", "s1", p("snap.qcow2")]);

  // ...and byte patches of valid images.
  const setU64 = (at: number, value: bigint) => (b: Buffer) => b.writeBigUInt64BE(value, at);
  const orIncompatible = (bit: bigint) => (b: Buffer) => b.writeBigUInt64BE(b.readBigUInt64BE(72) | bit, 72);
  patchedCopy(p("v3.qcow2"), p("datafile-bit.qcow2"), orIncompatible(4n));
  patchedCopy(p("datafile.qcow2"), p("datafile-ext.qcow2"), (b) =>
    b.writeBigUInt64BE(b.readBigUInt64BE(72) & ~4n, 72),
  );
  patchedCopy(p("v3.qcow2"), p("unknown-bit.qcow2"), orIncompatible(1n << 5n));
  patchedCopy(p("v3.qcow2"), p("corrupt-bit.qcow2"), orIncompatible(2n));
  patchedCopy(p("v3.qcow2"), p("dirty-bit.qcow2"), orIncompatible(1n));
  patchedCopy(p("v3.qcow2"), p("encrypted.qcow2"), (b) => b.writeUInt32BE(1, 32));
  patchedCopy(p("v3.qcow2"), p("l1-outside.qcow2"), setU64(40, 1n << 40n));
  patchedCopy(p("v3.qcow2"), p("reftable-huge.qcow2"), (b) => b.writeUInt32BE(0x10000, 56));
  patchedCopy(p("v3.qcow2"), p("iso-polyglot.qcow2"), (b) => b.write("CD001", 0x8001, "latin1"));
  // 1 PiB claimed by a 1 MiB file.
  patchedCopy(p("empty.qcow2"), p("petabyte.qcow2"), (b) => b.writeBigUInt64BE(1n << 50n, 24));
  writeFileSync(
    p("petabyte.qcow2"),
    Buffer.concat([readFileSync(p("petabyte.qcow2")), Buffer.alloc(MiB)]).subarray(0, MiB),
  );
  patchedCopy(p("sparse.vmdk"), p("petabyte.vmdk"), (b) => b.writeBigUInt64LE((1n << 50n) / 512n, 12));

  // An L2 entry pointing at an unaligned host offset; a data cluster whose refcount is 0.
  const firstL2Entry = (b: Buffer) => {
    const l1 = Number(b.readBigUInt64BE(40));
    const l2 = Number(b.readBigUInt64BE(l1) & 0x00ff_ffff_ffff_fe00n);
    return l2 + 8; // guest cluster 1 (written above)
  };
  patchedCopy(p("v3.qcow2"), p("l2-unaligned.qcow2"), (b) => {
    const at = firstL2Entry(b);
    b.writeBigUInt64BE(b.readBigUInt64BE(at) + 512n, at);
  });
  patchedCopy(p("v3.qcow2"), p("refcount-zero.qcow2"), (b) => {
    const host = Number(b.readBigUInt64BE(firstL2Entry(b)) & 0x00ff_ffff_ffff_fe00n);
    const reftable = Number(b.readBigUInt64BE(48));
    const block = Number(b.readBigUInt64BE(reftable));
    b.writeUInt16BE(0, block + (host / 65536) * 2);
  });

  // vmdk: extents naming other files, parent CID, text-only descriptor, table outside the file.
  const descriptorEnd = 512 * 21;
  const extentName = (b: Buffer) =>
    /RW \d+ SPARSE "([^"]+)"/.exec(b.subarray(512, descriptorEnd).toString("latin1"))![1]!;
  patchedCopy(p("sparse.vmdk"), p("extent-absolute.vmdk"), (b) =>
    replaceText(b, `"${extentName(b)}"`, '"/etc/passwd"', descriptorEnd),
  );
  patchedCopy(p("sparse.vmdk"), p("extent-relative.vmdk"), (b) =>
    replaceText(b, `"${extentName(b)}"`, '"../other/disk.vmdk"', descriptorEnd),
  );
  patchedCopy(p("sparse.vmdk"), p("extent-extra.vmdk"), (b) =>
    replaceText(
      b,
      `SPARSE "${extentName(b)}"`,
      `SPARSE "${extentName(b)}"\nRW 8192 FLAT "secrets.img" 0`,
      descriptorEnd,
    ),
  );
  patchedCopy(p("sparse.vmdk"), p("parent-cid.vmdk"), (b) =>
    replaceText(b, "parentCID=ffffffff", "parentCID=12345678", descriptorEnd),
  );
  patchedCopy(p("sparse.vmdk"), p("gd-outside.vmdk"), (b) => b.writeBigUInt64LE(1n << 30n, 56));
  patchedCopy(p("sparse.vmdk"), p("mbr-polyglot.vmdk"), (b) => {
    b[446 + 4] = 0x83; // one Linux partition
    b[510] = 0x55;
    b[511] = 0xaa;
  });
  writeFileSync(
    p("descriptor-only.vmdk"),
    '# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\nRW 8192 SPARSE "disk.vmdk"\n',
  );
  // Raw uploads that are something else.
  patchedCopy(p("data.raw"), p("vhd.raw"), (b) => b.write("conectix", 0, "latin1"));
  patchedCopy(p("data.raw"), p("cowd.raw"), (b) => b.write("COWD", 0, "latin1"));
  patchedCopy(p("data.raw"), p("hybrid-iso.raw"), (b) => {
    b.write("CD001", 0x8001, "latin1");
    b.fill(0, 446, 510);
    b[446] = 0x80;
    b[446 + 4] = 0x17;
    b[510] = 0x55;
    b[511] = 0xaa;
  });
});

const memoryFiles: MemoryFile[] = [];
function memoryOf(name: string): MemoryFile {
  const file = createMemoryFile({ data: readFileSync(p(name)), readOnly: true });
  memoryFiles.push(file);
  return file;
}

/**
 * Inspects `name` from memory (the inspector has no path, so it cannot open anything but these bytes)
 * and checks the work stayed bounded: a handful of reads, never more bytes than the file has plus the
 * fixed head/tail windows, and well under a second or two.
 */
async function inspectBytes(name: string, declared: FormatName, limits = QUOTA) {
  const file = memoryOf(name);
  const size = await file.size();
  const started = performance.now();
  try {
    return await inspectImage(file, declared, limits);
  } finally {
    expect(performance.now() - started).toBeLessThan(5000);
    expect(file.stats.bytesRead).toBeLessThanOrEqual(3 * size + 3 * MiB);
    expect(file.stats.writes).toBe(0);
  }
}

/** Inspects `name` through a real read-only HostFile in the scratch directory (where the FIFO traps are). */
async function inspectOnDisk(name: string, declared: FormatName, limits = QUOTA) {
  const file: HostFile = await openHostFile(p(name), { readOnly: true });
  try {
    return await inspectImage(file, declared, limits);
  } finally {
    await file.close();
  }
}

describe("inspectImage accepts what QEMU makes", () => {
  test.each([
    ["data.raw", "raw", 4 * MiB],
    ["hybrid-iso.raw", "raw", 4 * MiB],
    ["v2.qcow2", "qcow2", 4 * MiB],
    ["v3.qcow2", "qcow2", 4 * MiB],
    ["compressed.qcow2", "qcow2", 4 * MiB],
    ["empty.qcow2", "qcow2", MiB],
    ["sparse.vmdk", "vmdk", 4 * MiB],
    ["stream.vmdk", "vmdk", 4 * MiB],
  ] as const)("%s as %s", async (name, format, virtualSize) => {
    const inspection = await inspectBytes(name, format);
    expect(inspection).toMatchObject({ format, virtualSize, fileSize: readFileSync(p(name)).length });
  });

  test("format details come from the opened image", async () => {
    expect((await inspectBytes("v2.qcow2", "qcow2")).details.qcow2).toMatchObject({
      version: 2,
      dirty: false,
    });
    expect((await inspectBytes("stream.vmdk", "vmdk")).details.vmdk).toMatchObject({
      subformat: "streamOptimized",
    });
    expect((await inspectBytes("sparse.vmdk", "vmdk")).details.vmdk).toMatchObject({
      subformat: "monolithicSparse",
    });
  });

  test("a read-write HostFile is only read, and stays open for the caller", async () => {
    const file = createMemoryFile({ data: readFileSync(p("v3.qcow2")) });
    await inspectImage(file, "qcow2", QUOTA);
    expect(file.stats.writes).toBe(0);
    expect(file.stats.flushes).toBe(0);
    expect(await file.size()).toBe(readFileSync(p("v3.qcow2")).length); // not closed
  });
});

describe("inspectImage refuses hostile uploads (issue 5 acceptance list)", () => {
  const INVALID = "INVALID_ARGUMENT";
  test.each([
    // qcow2: anything naming another file
    ["overlay.qcow2", "qcow2", "QCOW2_BACKING_FILE"],
    ["datafile.qcow2", "qcow2", "QCOW2_EXTERNAL_DATA_FILE"],
    ["datafile-bit.qcow2", "qcow2", "QCOW2_EXTERNAL_DATA_FILE"],
    ["datafile-ext.qcow2", "qcow2", "QCOW2_EXTERNAL_DATA_FILE"],
    // qcow2: state and features
    ["unknown-bit.qcow2", "qcow2", "QCOW2_UNKNOWN_INCOMPATIBLE_FEATURE"],
    ["corrupt-bit.qcow2", "qcow2", "QCOW2_CORRUPT_BIT"],
    ["dirty-bit.qcow2", "qcow2", "QCOW2_DIRTY"],
    ["v1.qcow", "qcow2", "QCOW2_UNSUPPORTED_VERSION"],
    ["encrypted.qcow2", "qcow2", "QCOW2_ENCRYPTED"],
    ["snap.qcow2", "qcow2", "QCOW2_INTERNAL_SNAPSHOTS"],
    // qcow2: tables
    ["l1-outside.qcow2", "qcow2", "QCOW2_TABLE_OFFSET_INVALID"],
    ["reftable-huge.qcow2", "qcow2", "QCOW2_REFTABLE_TOO_LARGE"],
    ["l2-unaligned.qcow2", "qcow2", "QCOW2_CLUSTER_OFFSET_UNALIGNED"],
    ["refcount-zero.qcow2", "qcow2", "IMPORT_CORRUPT_METADATA"],
    // identity
    ["v3.qcow2", "raw", "IMPORT_FORMAT_MISMATCH"],
    ["sparse.vmdk", "raw", "IMPORT_FORMAT_MISMATCH"],
    ["stream.vmdk", "raw", "IMPORT_FORMAT_MISMATCH"],
    ["flat.vmdk", "raw", "IMPORT_FORMAT_MISMATCH"],
    ["cowd.raw", "raw", "IMPORT_FORMAT_MISMATCH"],
    ["vhd.raw", "raw", "IMPORT_FORMAT_MISMATCH"],
    ["data.raw", "qcow2", "IMPORT_FORMAT_MISMATCH"],
    ["data.raw", "vmdk", "IMPORT_FORMAT_MISMATCH"],
    ["sparse.vmdk", "qcow2", "IMPORT_FORMAT_MISMATCH"],
    ["v3.qcow2", "vmdk", "IMPORT_FORMAT_MISMATCH"],
    ["iso-polyglot.qcow2", "qcow2", "IMPORT_POLYGLOT"],
    ["iso-polyglot.qcow2", "raw", "IMPORT_POLYGLOT"],
    ["mbr-polyglot.vmdk", "vmdk", "IMPORT_POLYGLOT"],
    // vmdk
    ["flat.vmdk", "vmdk", "VMDK_UNSUPPORTED_CREATE_TYPE"],
    ["split.vmdk", "vmdk", "VMDK_UNSUPPORTED_CREATE_TYPE"],
    ["extent-absolute.vmdk", "vmdk", "VMDK_EXTERNAL_EXTENT"],
    ["extent-relative.vmdk", "vmdk", "VMDK_EXTERNAL_EXTENT"],
    ["extent-extra.vmdk", "vmdk", "VMDK_EXTERNAL_EXTENT"],
    ["descriptor-only.vmdk", "vmdk", "VMDK_DESCRIPTOR_FILE"],
    ["child.vmdk", "vmdk", "VMDK_PARENT_LINK"],
    ["parent-cid.vmdk", "vmdk", "VMDK_PARENT_LINK"],
    ["gd-outside.vmdk", "vmdk", "VMDK_TABLE_OUT_OF_RANGE"],
  ] as const)("%s declared %s → %s", async (name, declared, reason) => {
    await expectEngineError(inspectBytes(name, declared), INVALID, reason);
  });

  test.each([
    ["petabyte.qcow2", "qcow2"],
    ["petabyte.vmdk", "vmdk"],
  ] as const)("1 PiB claimed by %s → NO_SPACE before any table is read", async (name, declared) => {
    expect(readFileSync(p(name)).length).toBeLessThanOrEqual(MiB);
    const file = memoryOf(name);
    await expectEngineError(inspectImage(file, declared, QUOTA), "NO_SPACE", "VIRTUAL_SIZE_OVER_QUOTA");
    expect(file.stats.reads).toBeLessThanOrEqual(3);
  });

  test("a raw upload over the quota is NO_SPACE", async () => {
    await expectEngineError(
      inspectBytes("data.raw", "raw", { maxVirtualSize: MiB }),
      "NO_SPACE",
      "VIRTUAL_SIZE_OVER_QUOTA",
    );
  });

  test("with the quota out of the way, a 1 PiB qcow2 in 1 MiB still fails its header checks", async () => {
    await expectEngineError(
      inspectBytes("petabyte.qcow2", "qcow2", { maxVirtualSize: Number.MAX_SAFE_INTEGER }),
      "INVALID_ARGUMENT",
      "QCOW2_L1_TOO_SMALL",
    );
  });

  // The files these images name are FIFOs: opening one would block and time this test out.
  test.each([
    ["overlay.qcow2", "qcow2", "QCOW2_BACKING_FILE"],
    ["datafile.qcow2", "qcow2", "QCOW2_EXTERNAL_DATA_FILE"],
    ["flat.vmdk", "vmdk", "VMDK_UNSUPPORTED_CREATE_TYPE"],
    ["split.vmdk", "vmdk", "VMDK_UNSUPPORTED_CREATE_TYPE"],
    ["child.vmdk", "vmdk", "VMDK_PARENT_LINK"],
  ] as const)("on disk, %s opens nothing it names (%s → %s)", async (name, declared, reason) => {
    await expectEngineError(inspectOnDisk(name, declared), "INVALID_ARGUMENT", reason);
  });

  test("cancellation is honoured", async () => {
    const controller = new AbortController();
    controller.abort();
    await expectEngineError(
      inspectImage(memoryOf("v3.qcow2"), "qcow2", QUOTA, { signal: controller.signal }),
      "CANCELLED",
      "CANCELLED",
    );
  });
});
