import { randomBytes } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { describe, expect, it } from "vitest";
import { VdiskError } from "../errors.js";
import {
  ReadVolumeRequestSchema,
  ReadVolumeResponseSchema,
  WriteVolumeRequestSchema,
  WriteVolumeResponseSchema,
} from "../gen/vdisk/v1/data_pb.js";
import {
  decodeReadVolumeResponse,
  decodeWriteVolumeResponse,
  encodeReadVolumeRequest,
  encodeWriteChunkHeader,
  encodeWriteFlush,
  encodeWriteOpen,
  encodeWriteZero,
  PREFIX_BYTES,
} from "./data-messages.js";

const OFFSETS = [0, 1, 127, 128, 16_383, 16_384, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 12_345, 2 ** 53 - 1];

function unframe(framed: Buffer): Buffer {
  expect(framed[0]).toBe(0);
  expect(framed.readUInt32BE(1)).toBe(framed.length - PREFIX_BYTES);
  return framed.subarray(PREFIX_BYTES);
}

/** Cuts a message into pieces at the given sizes, as the network might deliver it. */
function split(bytes: Uint8Array, size: number): Buffer[] {
  const parts: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += size) parts.push(Buffer.from(bytes.subarray(at, at + size)));
  return parts;
}

describe("request encoders", () => {
  it("ReadVolumeRequest matches protobuf-es", () => {
    for (const offset of OFFSETS) {
      const fields = {
        name: "vol-é",
        offset,
        length: 3 * offset,
        chunkSize: 65_536,
        sparse: offset % 2 === 0,
      };
      const expected = toBinary(
        ReadVolumeRequestSchema,
        create(ReadVolumeRequestSchema, { ...fields, offset: BigInt(offset), length: BigInt(3 * offset) }),
      );
      expect(unframe(encodeReadVolumeRequest(fields))).toEqual(Buffer.from(expected));
    }
  });

  it("open, zero and flush match protobuf-es", () => {
    const open = create(WriteVolumeRequestSchema, {
      payload: { case: "open", value: { name: "disk", zeroDetection: 3 } },
    });
    expect(unframe(encodeWriteOpen("disk", "unmap"))).toEqual(
      Buffer.from(toBinary(WriteVolumeRequestSchema, open)),
    );
    for (const offset of OFFSETS) {
      const zero = create(WriteVolumeRequestSchema, {
        payload: { case: "zero", value: { offset: BigInt(offset), length: 4096n } },
      });
      expect(unframe(encodeWriteZero(offset, 4096))).toEqual(
        Buffer.from(toBinary(WriteVolumeRequestSchema, zero)),
      );
    }
    const flush = create(WriteVolumeRequestSchema, { payload: { case: "flush", value: {} } });
    expect(unframe(encodeWriteFlush())).toEqual(Buffer.from(toBinary(WriteVolumeRequestSchema, flush)));
  });

  it("a chunk header followed by the data is the protobuf-es message", () => {
    for (const offset of OFFSETS) {
      for (const length of [0, 1, 127, 128, 65_536, 1024 * 1024 + 3]) {
        const data = randomBytes(length);
        const header = encodeWriteChunkHeader(offset, length);
        const framed = Buffer.concat([header, data]);
        const expected = toBinary(
          WriteVolumeRequestSchema,
          create(WriteVolumeRequestSchema, {
            payload: { case: "chunk", value: { offset: BigInt(offset), data } },
          }),
        );
        expect(unframe(framed).equals(Buffer.from(expected))).toBe(true);
      }
    }
  });
});

describe("ReadVolumeResponse decoder", () => {
  it("decodes chunks split anywhere into views of the pieces, without copying", () => {
    const data = randomBytes(1000);
    const bytes = toBinary(
      ReadVolumeResponseSchema,
      create(ReadVolumeResponseSchema, { payload: { case: "chunk", value: { offset: 2n ** 40n, data } } }),
    );
    for (const size of [1, 2, 3, 7, 64, 999, bytes.length]) {
      const parts = split(bytes, size);
      const decoded = decodeReadVolumeResponse(parts, bytes.length);
      expect(decoded.kind).toBe("chunk");
      if (decoded.kind !== "chunk") continue;
      expect(decoded.offset).toBe(2 ** 40);
      expect(decoded.length).toBe(1000);
      expect(Buffer.concat(decoded.data).equals(data)).toBe(true);
      for (const view of decoded.data) expect(parts.some((p) => p.buffer === view.buffer)).toBe(true);
    }
  });

  it("decodes zero runs and empty messages", () => {
    const zero = toBinary(
      ReadVolumeResponseSchema,
      create(ReadVolumeResponseSchema, {
        payload: { case: "zero", value: { offset: 4096n, length: 2n ** 40n } },
      }),
    );
    expect(decodeReadVolumeResponse(split(zero, 3), zero.length)).toEqual({
      kind: "zero",
      offset: 4096,
      length: 2 ** 40,
    });
    expect(decodeReadVolumeResponse([], 0)).toEqual({ kind: "empty" });
  });

  it("skips unknown fields of every wire type, at both levels", () => {
    const inner = new BinaryWriter()
      .tag(9, 0)
      .uint64(5n)
      .tag(1, 0)
      .uint64(77n)
      .tag(10, 1)
      .fixed64(1n)
      .tag(2, 2)
      .bytes(Buffer.from("abc"))
      .tag(11, 5)
      .fixed32(3)
      .tag(12, 2)
      .bytes(Buffer.alloc(10))
      .finish();
    const outer = new BinaryWriter()
      .tag(15, 2)
      .bytes(Buffer.alloc(3))
      .tag(1, 2)
      .bytes(inner)
      .tag(16, 0)
      .uint32(1)
      .finish();
    const decoded = decodeReadVolumeResponse(split(outer, 5), outer.length);
    expect(decoded).toMatchObject({ kind: "chunk", offset: 77, length: 3 });
    if (decoded.kind === "chunk") expect(Buffer.concat(decoded.data).toString()).toBe("abc");
    const viaSchema = fromBinary(ReadVolumeResponseSchema, outer);
    expect(viaSchema.payload.case).toBe("chunk");
  });

  it("keeps the last oneof member, as protobuf does", () => {
    const bytes = new BinaryWriter()
      .tag(1, 2)
      .bytes(new BinaryWriter().tag(1, 0).uint64(8n).finish())
      .tag(2, 2)
      .bytes(new BinaryWriter().tag(1, 0).uint64(16n).tag(2, 0).uint64(32n).finish())
      .finish();
    expect(decodeReadVolumeResponse([Buffer.from(bytes)], bytes.length)).toEqual({
      kind: "zero",
      offset: 16,
      length: 32,
    });
  });

  const MALFORMED: Array<[string, number[]]> = [
    ["a truncated varint", [0x0a, 0x80]],
    ["a length past the end", [0x0a, 0x05, 0x08]],
    ["a wrong wire type for the payload", [0x08, 0x01]],
    ["a wrong wire type for the offset", [0x0a, 0x02, 0x0a, 0x00]],
    ["an 11-byte varint", [0x0a, 0x0b, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]],
    ["a group wire type", [0x1b]],
    ["field number 0", [0x02, 0x00]],
    ["an offset above 2^53", [0x0a, 0x0a, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]],
  ];
  it.each(MALFORMED)("refuses %s with an INTERNAL VdiskError", (_what, bytes) => {
    const buffer = Buffer.from(bytes);
    let caught: unknown;
    try {
      decodeReadVolumeResponse([buffer], buffer.length);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(VdiskError);
    expect(caught).toMatchObject({ code: "internal" });
  });
});

describe("WriteVolumeResponse decoder", () => {
  it("matches protobuf-es", () => {
    const bytes = toBinary(
      WriteVolumeResponseSchema,
      create(WriteVolumeResponseSchema, {
        writtenBytes: 2n ** 33n,
        zeroedBytes: 5n,
        flushedBytes: 2n ** 33n + 5n,
      }),
    );
    expect(decodeWriteVolumeResponse(split(bytes, 2), bytes.length)).toEqual({
      writtenBytes: 2 ** 33,
      zeroedBytes: 5,
      flushedBytes: 2 ** 33 + 5,
    });
  });
});
