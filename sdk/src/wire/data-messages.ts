import type { ZeroDetectionName } from "../enums.js";
import { zeroDetections } from "../enums.js";
import { malformed, PartsReader, WIRE_LENGTH_DELIMITED, WIRE_VARINT } from "./parts-reader.js";

/**
 * Hand codecs for the messages of ReadVolume and WriteVolume (proto/vdisk/v1/data.proto, DataChunk and
 * ZeroRun in common.proto). They produce what protobuf-es produces for the same values (proto3 defaults
 * omitted), but a data chunk's payload is never copied: on encode it is written after a small header, on
 * decode it stays a list of views of the received pieces.
 */

/** gRPC's message prefix: one flag byte (0 = uncompressed) and a big-endian 32-bit length. */
export const PREFIX_BYTES = 5;

function varintLength(value: number): number {
  let length = 1;
  for (let v = value; v >= 128; v = Math.floor(v / 128)) length++;
  return length;
}

/** Offsets reach 2^53, past what 32-bit shifts handle, hence division. */
function putVarint(target: Buffer, at: number, value: number): number {
  let pos = at;
  let v = value;
  while (v >= 128) {
    target[pos++] = (v % 128) | 128;
    v = Math.floor(v / 128);
  }
  target[pos++] = v;
  return pos;
}

function key(field: number, wireType: number): number {
  return (field << 3) | wireType;
}

/** Builds a message from fields, each a varint (skipped when 0/false, as proto3 does) or bytes. */
type Field = { field: number; varint: number } | { field: number; bytes: Buffer };

function fieldsLength(fields: readonly Field[]): number {
  let length = 0;
  for (const f of fields) {
    if ("varint" in f) {
      if (f.varint !== 0) length += varintLength(key(f.field, WIRE_VARINT)) + varintLength(f.varint);
    } else {
      length +=
        varintLength(key(f.field, WIRE_LENGTH_DELIMITED)) + varintLength(f.bytes.length) + f.bytes.length;
    }
  }
  return length;
}

function putFields(target: Buffer, at: number, fields: readonly Field[]): number {
  let pos = at;
  for (const f of fields) {
    if ("varint" in f) {
      if (f.varint === 0) continue;
      pos = putVarint(target, pos, key(f.field, WIRE_VARINT));
      pos = putVarint(target, pos, f.varint);
    } else {
      pos = putVarint(target, pos, key(f.field, WIRE_LENGTH_DELIMITED));
      pos = putVarint(target, pos, f.bytes.length);
      pos += f.bytes.copy(target, pos);
    }
  }
  return pos;
}

function putPrefix(target: Buffer, messageLength: number): void {
  target[0] = 0;
  target.writeUInt32BE(messageLength, 1);
}

/** A whole framed message (prefix included) made of `fields`. */
function framed(fields: readonly Field[]): Buffer {
  const length = fieldsLength(fields);
  const out = Buffer.allocUnsafe(PREFIX_BYTES + length);
  putPrefix(out, length);
  putFields(out, PREFIX_BYTES, fields);
  return out;
}

/** A framed message whose only field is the sub-message `inner` under `field` (a oneof case). */
function framedOneof(field: number, inner: readonly Field[]): Buffer {
  return framed([{ field, bytes: subMessage(inner) }]);
}

function subMessage(fields: readonly Field[]): Buffer {
  const out = Buffer.allocUnsafe(fieldsLength(fields));
  putFields(out, 0, fields);
  return out;
}

export interface ReadVolumeRequestFields {
  name: string;
  offset: number;
  length: number;
  chunkSize: number;
  sparse: boolean;
}

/** ReadVolumeRequest, framed. */
export function encodeReadVolumeRequest(request: ReadVolumeRequestFields): Buffer {
  return framed([
    { field: 1, bytes: Buffer.from(request.name, "utf8") },
    { field: 2, varint: request.offset },
    { field: 3, varint: request.length },
    { field: 4, varint: request.chunkSize },
    { field: 5, varint: request.sparse ? 1 : 0 },
  ]);
}

/** WriteVolumeRequest{open}, framed. */
export function encodeWriteOpen(name: string, zeroDetection: ZeroDetectionName): Buffer {
  return framedOneof(1, [
    { field: 1, bytes: Buffer.from(name, "utf8") },
    { field: 2, varint: zeroDetections.encode(zeroDetection) },
  ]);
}

/** WriteVolumeRequest{zero}, framed. */
export function encodeWriteZero(offset: number, length: number): Buffer {
  return framedOneof(3, [
    { field: 1, varint: offset },
    { field: 2, varint: length },
  ]);
}

/** WriteVolumeRequest{flush}, framed. */
export function encodeWriteFlush(): Buffer {
  return framed([{ field: 4, bytes: Buffer.alloc(0) }]);
}

const WRITE_CHUNK_FIELD = 2;
const CHUNK_OFFSET_FIELD = 1;
const CHUNK_DATA_FIELD = 2;

/**
 * The prefix and every byte of WriteVolumeRequest{chunk{offset, data}} before the data itself: the
 * caller sends this, then `data` unchanged, and the two together are one framed message.
 */
export function encodeWriteChunkHeader(offset: number, dataLength: number): Buffer {
  const offsetBytes = offset === 0 ? 0 : 1 + varintLength(offset);
  // proto3 leaves out an empty bytes field.
  const dataHeader = dataLength === 0 ? 0 : 1 + varintLength(dataLength);
  const inner = offsetBytes + dataHeader + dataLength;
  const outerHeader = 1 + varintLength(inner);
  const messageLength = outerHeader + inner;
  const out = Buffer.allocUnsafe(PREFIX_BYTES + outerHeader + offsetBytes + dataHeader);
  putPrefix(out, messageLength);
  let pos = PREFIX_BYTES;
  out[pos++] = key(WRITE_CHUNK_FIELD, WIRE_LENGTH_DELIMITED);
  pos = putVarint(out, pos, inner);
  if (offset !== 0) {
    out[pos++] = key(CHUNK_OFFSET_FIELD, WIRE_VARINT);
    pos = putVarint(out, pos, offset);
  }
  if (dataLength !== 0) {
    out[pos++] = key(CHUNK_DATA_FIELD, WIRE_LENGTH_DELIMITED);
    putVarint(out, pos, dataLength);
  }
  return out;
}

/** One decoded ReadVolumeResponse. */
export type ReadVolumeMessage =
  | { kind: "chunk"; offset: number; data: Buffer[]; length: number }
  | { kind: "zero"; offset: number; length: number }
  | { kind: "empty" };

function expectWireType(actual: number, expected: number, what: string): void {
  if (actual !== expected) throw malformed(`${what} has wire type ${actual}`);
}

/** DataChunk or ZeroRun: two fields; a repeated field keeps its last value, as protobuf merges do. */
function decodeChunk(reader: PartsReader, into: { offset: number; data: Buffer[]; length: number }): void {
  while (!reader.done) {
    const { field, wireType } = reader.tag();
    if (field === CHUNK_OFFSET_FIELD) {
      expectWireType(wireType, WIRE_VARINT, "DataChunk.offset");
      into.offset = reader.varint();
    } else if (field === CHUNK_DATA_FIELD) {
      expectWireType(wireType, WIRE_LENGTH_DELIMITED, "DataChunk.data");
      const length = reader.lengthPrefix();
      into.data = reader.take(length);
      into.length = length;
    } else {
      reader.skipField(wireType);
    }
  }
}

function decodeZeroRun(reader: PartsReader, into: { offset: number; length: number }): void {
  while (!reader.done) {
    const { field, wireType } = reader.tag();
    if (field === 1 || field === 2) {
      expectWireType(wireType, WIRE_VARINT, "ZeroRun field");
      const value = reader.varint();
      if (field === 1) into.offset = value;
      else into.length = value;
    } else {
      reader.skipField(wireType);
    }
  }
}

/**
 * Decodes a ReadVolumeResponse held in `parts` (`length` bytes in all). Unknown fields are skipped; of
 * several oneof members the last wins, and a member repeated merges into the previous one, as protobuf
 * decoders do. Malformed input throws a VdiskError (INTERNAL).
 */
export function decodeReadVolumeResponse(parts: readonly Buffer[], length: number): ReadVolumeMessage {
  const reader = new PartsReader(parts, length);
  let message: ReadVolumeMessage = { kind: "empty" };
  while (!reader.done) {
    const { field, wireType } = reader.tag();
    if (field === 1 || field === 2) {
      expectWireType(wireType, WIRE_LENGTH_DELIMITED, "ReadVolumeResponse.payload");
      const inner = reader.sub(reader.lengthPrefix());
      if (field === 1) {
        const chunk: Extract<ReadVolumeMessage, { kind: "chunk" }> =
          message.kind === "chunk" ? message : { kind: "chunk", offset: 0, data: [], length: 0 };
        decodeChunk(inner, chunk);
        message = chunk;
      } else {
        const zero: Extract<ReadVolumeMessage, { kind: "zero" }> =
          message.kind === "zero" ? message : { kind: "zero", offset: 0, length: 0 };
        decodeZeroRun(inner, zero);
        message = zero;
      }
    } else {
      reader.skipField(wireType);
    }
  }
  return message;
}

/** WriteVolumeResponse: three counters. */
export interface WriteVolumeCounters {
  writtenBytes: number;
  zeroedBytes: number;
  flushedBytes: number;
}

export function decodeWriteVolumeResponse(parts: readonly Buffer[], length: number): WriteVolumeCounters {
  const reader = new PartsReader(parts, length);
  const out: WriteVolumeCounters = { writtenBytes: 0, zeroedBytes: 0, flushedBytes: 0 };
  while (!reader.done) {
    const { field, wireType } = reader.tag();
    if (field >= 1 && field <= 3) {
      expectWireType(wireType, WIRE_VARINT, "WriteVolumeResponse counter");
      const value = reader.varint();
      if (field === 1) out.writtenBytes = value;
      else if (field === 2) out.zeroedBytes = value;
      else out.flushedBytes = value;
    } else {
      reader.skipField(wireType);
    }
  }
  return out;
}
