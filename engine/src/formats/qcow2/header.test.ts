import { describe, expect, it } from "vitest";
import { EngineError } from "../../errors.js";
import {
  backingFormatOf,
  EXT_BACKING_FORMAT,
  EXT_FEATURE_TABLE,
  parseHeader,
  type Qcow2Header,
  serializeHeader,
  withBackingFormat,
} from "./header.js";

function baseHeader(version: 2 | 3): Qcow2Header {
  return {
    version,
    backingFileOffset: 0,
    backingFile: undefined,
    clusterBits: 16,
    size: 1 << 30,
    cryptMethod: 0,
    l1Size: 2,
    l1TableOffset: 3 * 65536,
    refcountTableOffset: 65536,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: version === 3 ? 1n : 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: version === 3 ? 112 : 72,
    headerTail: version === 3 ? new Uint8Array(8) : new Uint8Array(0),
    extensions: [],
  };
}

const FILE_SIZE = 4 * 65536;

function cluster0(bytes: Uint8Array): Buffer {
  const b = Buffer.alloc(65536);
  b.set(bytes);
  return b;
}

function expectError(fn: () => unknown, code: string, reason: string): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(EngineError);
    expect((err as EngineError).code).toBe(code);
    expect((err as EngineError).reason).toBe(reason);
    return;
  }
  throw new Error(`expected ${code}/${reason}`);
}

describe("qcow2 header", () => {
  for (const version of [2, 3] as const) {
    it(`round-trips a v${version} header with backing name, format and unknown extensions`, () => {
      let h = baseHeader(version);
      h.backingFile = "base image.qcow2";
      h = withBackingFormat(h, "qcow2");
      h.extensions.push({ type: 0x12345678, data: Uint8Array.from([1, 2, 3, 4, 5]) });
      if (version === 3) {
        const table = new Uint8Array(48);
        table[0] = 0;
        table[1] = 0;
        table.set(Buffer.from("dirty bit"), 2);
        h.extensions.push({ type: EXT_FEATURE_TABLE, data: table });
      }
      const bytes = serializeHeader(h);
      const parsed = parseHeader(cluster0(bytes), FILE_SIZE);
      expect(parsed).toEqual(h);
      expect(Buffer.from(serializeHeader(parsed))).toEqual(Buffer.from(bytes));
      expect(backingFormatOf(parsed)).toBe("qcow2");
      expect(parsed.extensions[0]!.type).toBe(EXT_BACKING_FORMAT);
    });
  }

  it("keeps unknown header bytes past 104 opaque", () => {
    const h = baseHeader(3);
    h.headerLength = 120;
    h.headerTail = Uint8Array.from({ length: 16 }, (_, i) => (i === 0 ? 0 : i));
    expect(parseHeader(cluster0(serializeHeader(h)), FILE_SIZE)).toEqual(h);
  });

  const poke = (mutate: (b: Buffer) => void, h = baseHeader(3)): Buffer => {
    const b = cluster0(serializeHeader(h));
    mutate(b);
    return b;
  };

  it.each([
    ["bad magic", (b: Buffer) => b.writeUInt32BE(0x12345678, 0), "CORRUPT", "QCOW2_BAD_MAGIC"],
    ["version 1", (b: Buffer) => b.writeUInt32BE(1, 4), "UNSUPPORTED", "QCOW2_UNSUPPORTED_VERSION"],
    ["version 4", (b: Buffer) => b.writeUInt32BE(4, 4), "UNSUPPORTED", "QCOW2_UNSUPPORTED_VERSION"],
    ["cluster_bits 8", (b: Buffer) => b.writeUInt32BE(8, 20), "CORRUPT", "QCOW2_BAD_CLUSTER_BITS"],
    ["cluster_bits 22", (b: Buffer) => b.writeUInt32BE(22, 20), "UNSUPPORTED", "QCOW2_BAD_CLUSTER_BITS"],
    ["header_length 100", (b: Buffer) => b.writeUInt32BE(100, 100), "CORRUPT", "QCOW2_BAD_HEADER_LENGTH"],
    [
      "header_length > cluster",
      (b: Buffer) => b.writeUInt32BE(1 << 20, 100),
      "CORRUPT",
      "QCOW2_BAD_HEADER_LENGTH",
    ],
    [
      "unknown incompatible bit",
      (b: Buffer) => b.writeBigUInt64BE(1n << 7n, 72),
      "UNSUPPORTED",
      "QCOW2_UNKNOWN_INCOMPATIBLE_FEATURE",
    ],
    [
      "external data file bit",
      (b: Buffer) => b.writeBigUInt64BE(4n, 72),
      "UNSUPPORTED",
      "QCOW2_EXTERNAL_DATA_FILE",
    ],
    [
      "data-file-raw autoclear",
      (b: Buffer) => b.writeBigUInt64BE(2n, 88),
      "UNSUPPORTED",
      "QCOW2_EXTERNAL_DATA_FILE",
    ],
    [
      "compression bit without type",
      (b: Buffer) => b.writeBigUInt64BE(8n, 72),
      "CORRUPT",
      "QCOW2_COMPRESSION_TYPE_MISMATCH",
    ],
    [
      "unknown compression type",
      (b: Buffer) => {
        b[104] = 7;
        b.writeBigUInt64BE(8n, 72);
      },
      "UNSUPPORTED",
      "QCOW2_UNKNOWN_COMPRESSION_TYPE",
    ],
    ["refcount_order 7", (b: Buffer) => b.writeUInt32BE(7, 96), "CORRUPT", "QCOW2_BAD_REFCOUNT_ORDER"],
    ["AES encryption", (b: Buffer) => b.writeUInt32BE(1, 32), "UNSUPPORTED", "QCOW2_ENCRYPTED"],
    ["no refcount table", (b: Buffer) => b.writeUInt32BE(0, 56), "CORRUPT", "QCOW2_NO_REFCOUNT_TABLE"],
    [
      "huge refcount table",
      (b: Buffer) => b.writeUInt32BE(0x10000, 56),
      "UNSUPPORTED",
      "QCOW2_REFTABLE_TOO_LARGE",
    ],
    [
      "unaligned refcount table",
      (b: Buffer) => b.writeBigUInt64BE(65536n + 512n, 48),
      "CORRUPT",
      "QCOW2_TABLE_OFFSET_INVALID",
    ],
    ["huge l1_size", (b: Buffer) => b.writeUInt32BE(0x4000000, 36), "UNSUPPORTED", "QCOW2_L1_TOO_LARGE"],
    [
      "unaligned L1 offset",
      (b: Buffer) => b.writeBigUInt64BE(3n * 65536n + 8n, 40),
      "CORRUPT",
      "QCOW2_TABLE_OFFSET_INVALID",
    ],
    [
      "L1 beyond end of file",
      (b: Buffer) => b.writeBigUInt64BE(1n << 40n, 40),
      "CORRUPT",
      "QCOW2_TABLE_OFFSET_INVALID",
    ],
    ["L1 too small", (b: Buffer) => b.writeUInt32BE(1, 36), "CORRUPT", "QCOW2_L1_TOO_SMALL"],
    [
      "too many snapshots",
      (b: Buffer) => b.writeUInt32BE(70000, 60),
      "UNSUPPORTED",
      "QCOW2_TOO_MANY_SNAPSHOTS",
    ],
    [
      "unaligned snapshot table",
      (b: Buffer) => {
        b.writeUInt32BE(1, 60);
        b.writeBigUInt64BE(65537n, 64);
      },
      "CORRUPT",
      "QCOW2_TABLE_OFFSET_INVALID",
    ],
    [
      "virtual size above 2^53",
      (b: Buffer) => b.writeBigUInt64BE(1n << 60n, 24),
      "UNSUPPORTED",
      "QCOW2_IMAGE_TOO_BIG",
    ],
    [
      "extended L2 with 4 KiB clusters",
      (b: Buffer) => {
        b.writeUInt32BE(12, 20);
        b.writeBigUInt64BE(16n, 72);
      },
      "CORRUPT",
      "QCOW2_BAD_CLUSTER_BITS",
    ],
    [
      "backing offset past cluster",
      (b: Buffer) => b.writeBigUInt64BE(70000n, 8),
      "CORRUPT",
      "QCOW2_BAD_BACKING_OFFSET",
    ],
    [
      "backing name too long",
      (b: Buffer) => {
        b.writeBigUInt64BE(1024n, 8);
        b.writeUInt32BE(2000, 16);
      },
      "CORRUPT",
      "QCOW2_BACKING_NAME_TOO_LONG",
    ],
    [
      "extension too large",
      (b: Buffer) => {
        b.writeUInt32BE(0x1234, 112);
        b.writeUInt32BE(0x100000, 116);
      },
      "CORRUPT",
      "QCOW2_HEADER_EXTENSION_TOO_LARGE",
    ],
    [
      "backing format too long",
      (b: Buffer) => {
        b.writeUInt32BE(EXT_BACKING_FORMAT, 112);
        b.writeUInt32BE(20, 116);
      },
      "CORRUPT",
      "QCOW2_BACKING_FORMAT_TOO_LONG",
    ],
    [
      "data file name extension",
      (b: Buffer) => {
        b.writeUInt32BE(0x44415441, 112);
        b.writeUInt32BE(11, 116);
        b.write("/etc/shadow", 120);
      },
      "UNSUPPORTED",
      "QCOW2_EXTERNAL_DATA_FILE",
    ],
    [
      "duplicate extension",
      (b: Buffer) => {
        b.writeUInt32BE(0x99, 112);
        b.writeUInt32BE(0, 116);
        b.writeUInt32BE(0x99, 120);
      },
      "CORRUPT",
      "QCOW2_DUPLICATE_HEADER_EXTENSION",
    ],
    [
      "bitmaps extension of wrong size",
      (b: Buffer) => {
        b.writeUInt32BE(0x23852875, 112);
        b.writeUInt32BE(8, 116);
      },
      "CORRUPT",
      "QCOW2_BAD_BITMAPS_EXTENSION",
    ],
    [
      "crypto extension",
      (b: Buffer) => {
        b.writeUInt32BE(0x0537be77, 112);
        b.writeUInt32BE(16, 116);
      },
      "UNSUPPORTED",
      "QCOW2_ENCRYPTED",
    ],
  ])("rejects %s", (_name, mutate, code, reason) => {
    expectError(() => parseHeader(poke(mutate), FILE_SIZE), code, reason);
  });

  it("names unknown incompatible features from the feature table", () => {
    const h = baseHeader(3);
    const table = new Uint8Array(48);
    table[1] = 9;
    table.set(Buffer.from("future-feature"), 2);
    h.extensions.push({ type: EXT_FEATURE_TABLE, data: table });
    const b = poke((x) => x.writeBigUInt64BE(1n << 9n, 72), h);
    expect(() => parseHeader(b, FILE_SIZE)).toThrow(/future-feature/);
  });
});
