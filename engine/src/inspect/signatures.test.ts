import { describe, expect, test } from "vitest";
import { checkIdentity } from "./identity.js";
import { detectSignatures, SIGNATURE_HEAD_BYTES } from "./signatures.js";

function head(edit: (b: Buffer) => void): Buffer {
  const b = Buffer.alloc(SIGNATURE_HEAD_BYTES + 1024);
  edit(b);
  return b;
}

const names = (b: Buffer) => detectSignatures(b, b.length).map((s) => s.name);

describe("detectSignatures", () => {
  test("plain data has no signature", () => {
    expect(names(head(() => undefined))).toEqual([]);
  });

  test.each([
    ["qcow2", (b: Buffer) => b.write("QFI\xfb", 0, "latin1")],
    ["vmdk", (b: Buffer) => b.write("KDMV", 0, "latin1")],
    ["vmdk (VMDK3 COWD)", (b: Buffer) => b.write("COWD", 0, "latin1")],
    ["vmdk (text descriptor)", (b: Buffer) => b.write("# Disk DescriptorFile\nversion=1\n", 0, "latin1")],
    ["vhd", (b: Buffer) => b.write("conectix", 0, "latin1")],
    ["vhdx", (b: Buffer) => b.write("vhdxfile", 0, "latin1")],
    ["qed", (b: Buffer) => b.write("QED\0", 0, "latin1")],
    ["luks", (b: Buffer) => b.write("LUKS\xba\xbe", 0, "latin1")],
    ["vdi", (b: Buffer) => b.writeUInt32LE(0xbeda107f, 0x40)],
    ["iso9660", (b: Buffer) => b.write("CD001", 0x8801, "latin1")],
    ["udf", (b: Buffer) => b.write("NSR03", 0x9001, "latin1")],
    ["gpt", (b: Buffer) => b.write("EFI PART", 512, "latin1")],
  ])("%s", (name, edit) => {
    expect(names(head(edit))).toEqual([name]);
  });

  test("an MBR needs a plausible partition table, not just 55 AA", () => {
    const bare = head((b) => b.writeUInt16BE(0x55aa, 510));
    expect(names(bare)).toEqual([]);
    const withPartition = head((b) => {
      b.writeUInt16BE(0x55aa, 510);
      b[446 + 4] = 0x83;
    });
    expect(names(withPartition)).toEqual(["mbr"]);
    const badBootFlag = head((b) => {
      b.writeUInt16BE(0x55aa, 510);
      b[446 + 4] = 0x83;
      b[462] = 0x12;
    });
    expect(names(badBootFlag)).toEqual([]);
  });

  test("a short file is simply scanned as far as it goes", () => {
    expect(names(Buffer.from("QF"))).toEqual([]);
    expect(names(Buffer.alloc(0))).toEqual([]);
  });
});

describe("checkIdentity", () => {
  const sig = (edit: (b: Buffer) => void) => detectSignatures(head(edit), SIGNATURE_HEAD_BYTES + 1024);
  const hybridIso = sig((b) => {
    b.write("CD001", 0x8001, "latin1");
    b.writeUInt16BE(0x55aa, 510);
    b[446] = 0x80;
    b[446 + 4] = 0x17;
  });

  test("a hybrid ISO (ISO 9660 + MBR) is a raw disk", () => {
    expect(hybridIso.map((s) => s.name)).toEqual(["iso9660", "mbr"]);
    expect(() => checkIdentity("raw", hybridIso)).not.toThrow();
    expect(() => checkIdentity("qcow2", hybridIso)).toThrow(
      expect.objectContaining({ reason: "IMPORT_FORMAT_MISMATCH" }),
    );
  });

  test("a container plus anything else is a polyglot, whatever was declared", () => {
    const polyglot = sig((b) => {
      b.write("QFI\xfb", 0, "latin1");
      b.write("CD001", 0x9001, "latin1");
    });
    for (const declared of ["raw", "qcow2", "vmdk"] as const) {
      expect(() => checkIdentity(declared, polyglot)).toThrow(
        expect.objectContaining({ reason: "IMPORT_POLYGLOT" }),
      );
    }
    const twoContainers = sig((b) => {
      b.write("KDMV", 0, "latin1");
      b.writeUInt32LE(0xbeda107f, 0x40);
    });
    expect(() => checkIdentity("vmdk", twoContainers)).toThrow(
      expect.objectContaining({ reason: "IMPORT_POLYGLOT" }),
    );
  });

  test("foreign containers are never raw", () => {
    const luks = sig((b) => b.write("LUKS\xba\xbe", 0, "latin1"));
    expect(() => checkIdentity("raw", luks)).toThrow(
      expect.objectContaining({ code: "INVALID_ARGUMENT", reason: "IMPORT_FORMAT_MISMATCH" }),
    );
  });
});
