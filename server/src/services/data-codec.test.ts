import { randomBytes } from "node:crypto";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { describe, expect, it } from "vitest";
import { ReadVolumeResponse, WriteVolumeRequest } from "../gen/vdisk/v1/data.js";
import { installPreframedSend } from "../rpc/preframed-send.js";
import {
  allocateChunkResponse,
  deserializeWriteVolumeRequest,
  readVolumeResponseWritten,
  serializeReadVolumeResponse,
} from "./data-codec.js";

const OFFSETS = [0, 1, 127, 128, 16_383, 16_384, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 12_345, 2 ** 53 - 1];
const LENGTHS = [0, 1, 127, 128, 65_536, 1024 * 1024 + 3];

describe("ReadVolumeResponse chunk encoding", () => {
  it("produces the generated codec's bytes for every offset and length size class", () => {
    for (const offset of OFFSETS) {
      for (const length of LENGTHS) {
        const { response, data } = allocateChunkResponse(offset, length);
        expect(data.length).toBe(length);
        data.set(randomBytes(length));
        const expected = Buffer.from(ReadVolumeResponse.encode(response).finish());
        expect(serializeReadVolumeResponse(response).equals(expected)).toBe(true);
        const decoded = ReadVolumeResponse.decode(serializeReadVolumeResponse(response));
        expect(decoded.payload?.$case).toBe("chunk");
        if (decoded.payload?.$case === "chunk") {
          expect(decoded.payload.chunk.offset).toBe(BigInt(offset));
          expect(decoded.payload.chunk.data.equals(data)).toBe(true);
        }
      }
    }
  });

  it("encodes responses it did not allocate (zero runs) with the generated codec", () => {
    const zero: ReadVolumeResponse = {
      payload: { $case: "zero", zero: { offset: 4096n, length: 2n ** 40n } },
    };
    expect(
      serializeReadVolumeResponse(zero).equals(Buffer.from(ReadVolumeResponse.encode(zero).finish())),
    ).toBe(true);
  });
});

describe("WriteVolumeRequest decoding", () => {
  const encode = (message: WriteVolumeRequest) => Buffer.from(WriteVolumeRequest.encode(message).finish());

  it("decodes chunks like the generated codec, keeping the payload as a view of the message", () => {
    for (const offset of OFFSETS) {
      for (const length of LENGTHS) {
        const message: WriteVolumeRequest = {
          payload: { $case: "chunk", chunk: { offset: BigInt(offset), data: randomBytes(length) } },
        };
        const bytes = encode(message);
        const decoded = deserializeWriteVolumeRequest(bytes);
        const reference = WriteVolumeRequest.decode(bytes);
        // Field by field: toEqual walks a megabyte buffer byte by byte.
        if (decoded.payload?.$case !== "chunk" || reference.payload?.$case !== "chunk")
          throw new Error("expected a chunk");
        expect(decoded.payload.chunk.offset).toBe(reference.payload.chunk.offset);
        expect(decoded.payload.chunk.data.equals(reference.payload.chunk.data)).toBe(true);
        if (length > 0) expect(decoded.payload.chunk.data.buffer).toBe(bytes.buffer);
      }
    }
  });

  it("hands every other message to the generated codec", () => {
    const messages: WriteVolumeRequest[] = [
      { payload: { $case: "open", open: { name: "vol", zeroDetection: 2 } } },
      { payload: { $case: "zero", zero: { offset: 1n, length: 512n } } },
      { payload: { $case: "flush", flush: {} } },
      { payload: undefined },
    ];
    for (const message of messages) {
      const bytes = encode(message);
      expect(deserializeWriteVolumeRequest(bytes)).toEqual(WriteVolumeRequest.decode(bytes));
    }
  });

  it("follows protobuf's last-field-wins rule when a chunk is followed by another field", () => {
    const chunk = encode({ payload: { $case: "chunk", chunk: { offset: 8n, data: Buffer.from("abc") } } });
    const flush = encode({ payload: { $case: "flush", flush: {} } });
    const both = Buffer.concat([chunk, flush]);
    expect(deserializeWriteVolumeRequest(both)).toEqual(WriteVolumeRequest.decode(both));
    expect(deserializeWriteVolumeRequest(both).payload?.$case).toBe("flush");
  });

  it("skips unknown fields inside a chunk", () => {
    const inner = new BinaryWriter();
    inner.uint32(8).uint64(4096n);
    inner.uint32((9 << 3) | 2).bytes(Buffer.from("future"));
    inner.uint32(18).bytes(Buffer.from("data"));
    const innerBytes = inner.finish();
    const outer = new BinaryWriter();
    outer.uint32(18).bytes(innerBytes);
    const bytes = Buffer.from(outer.finish());
    const decoded = deserializeWriteVolumeRequest(bytes);
    expect(decoded).toEqual(WriteVolumeRequest.decode(bytes));
    expect(decoded.payload?.$case === "chunk" && decoded.payload.chunk.data.toString()).toBe("data");
  });
});

describe("pooled chunk buffers", () => {
  it("reuses a serialized chunk's buffer once, never handing it to two responses", async () => {
    const first = allocateChunkResponse(0, 64 * 1024);
    const bytes = serializeReadVolumeResponse(first.response);
    serializeReadVolumeResponse(first.response);
    await Promise.resolve();
    const second = allocateChunkResponse(64 * 1024, 64 * 1024);
    const third = allocateChunkResponse(128 * 1024, 64 * 1024);
    expect(second.data.buffer).toBe(bytes.buffer);
    expect(third.data.buffer).not.toBe(second.data.buffer);
    second.data.fill(1);
    const expected = Buffer.from(ReadVolumeResponse.encode(second.response).finish());
    expect(serializeReadVolumeResponse(second.response).equals(expected)).toBe(true);
  });
});

// Last in this file: installing the pass-through changes what serialize returns from here on.
describe("framed chunks (grpc-js pass-through installed)", () => {
  it("serializes to the complete gRPC frame and keeps the buffer until the write completed", async () => {
    expect(installPreframedSend()).toBe(true);
    const first = allocateChunkResponse(4096, 256 * 1024);
    first.data.fill(7);
    const frame = serializeReadVolumeResponse(first.response);
    const message = Buffer.from(ReadVolumeResponse.encode(first.response).finish());
    expect(frame[0]).toBe(0);
    expect(frame.readUInt32BE(1)).toBe(message.length);
    expect(frame.subarray(5).equals(message)).toBe(true);
    // Serialized but not yet written: the buffer is still grpc-js's.
    await Promise.resolve();
    const second = allocateChunkResponse(0, 256 * 1024);
    expect(second.data.buffer).not.toBe(first.data.buffer);
    readVolumeResponseWritten(first.response);
    readVolumeResponseWritten(first.response);
    const third = allocateChunkResponse(0, 256 * 1024);
    const fourth = allocateChunkResponse(0, 256 * 1024);
    expect(third.data.buffer).toBe(first.data.buffer);
    expect(fourth.data.buffer).not.toBe(first.data.buffer);
  });
});
