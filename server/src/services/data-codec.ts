import { BinaryReader } from "@bufbuild/protobuf/wire";
import { ReadVolumeResponse, WriteVolumeRequest } from "../gen/vdisk/v1/data.js";
import { FRAME_PREFIX_BYTES, markFramed, preframedSendInstalled } from "../rpc/preframed-send.js";

/**
 * Wire codecs for the two byte-streaming RPCs. The generated ts-proto codecs copy every data chunk
 * several times (writer growth, finish(), Buffer.from on both encode and decode); at 1 MiB per message
 * those copies and the garbage they leave dominated the server's CPU profile. These codecs produce the
 * same bytes (ReadVolumeResponse.chunk = field 1, DataChunk.offset = 1, DataChunk.data = 2;
 * WriteVolumeRequest.chunk = field 2) without touching the payload.
 */

const LENGTH_DELIMITED = 2;
const VARINT = 0;
const RESPONSE_CHUNK_TAG = (1 << 3) | LENGTH_DELIMITED;
const REQUEST_CHUNK_TAG = (2 << 3) | LENGTH_DELIMITED;
const OFFSET_TAG = (1 << 3) | VARINT;
const DATA_TAG = (2 << 3) | LENGTH_DELIMITED;

/** Marks a response whose complete wire form already exists, so serializing it is free. */
const ENCODED = Symbol("vdisk.encodedReadVolumeResponse");
/** The encoded response with room for the gRPC frame prefix in front (see preframed-send.ts). */
const FRAME = Symbol("vdisk.readVolumeFrame");
/** The pooled buffer an encoded response lives in, until it is serialized or written. */
const SLAB = Symbol("vdisk.readVolumeSlab");

type PreEncoded = ReadVolumeResponse & { [ENCODED]?: Buffer; [FRAME]?: Buffer; [SLAB]?: Buffer };

/**
 * Room for the gRPC frame prefix and the largest message header: outer tag + length, offset tag + varint,
 * data tag + length.
 */
const HEADER_ROOM = FRAME_PREFIX_BYTES + 32;
const POOLED_PAYLOADS = new Set([64 * 1024, 256 * 1024, 1024 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024]);
const POOL_DEPTH = 16;

/**
 * Message buffers of the usual chunk sizes, reused. A fresh 1 MiB buffer per message is external memory
 * V8 only returns at a full mark-compact, and it triggers one every few dozen MiB: at bulk rates that was
 * the server's largest CPU cost. A buffer is free again once its message is written out (framed buffers
 * pass through grpc-js), or right after serialization where grpc-js copies every message into a frame of
 * its own before serialize's caller returns.
 */
const slabs = new Map<number, Buffer[]>();

function takeSlab(payload: number): Buffer {
  const free = slabs.get(payload);
  return free?.pop() ?? Buffer.allocUnsafeSlow(payload + HEADER_ROOM);
}

function releaseSlab(payload: number, slab: Buffer): void {
  let free = slabs.get(payload);
  if (free === undefined) {
    free = [];
    slabs.set(payload, free);
  }
  if (free.length < POOL_DEPTH) free.push(slab);
}

function varintLength(value: number): number {
  let length = 1;
  for (let v = value; v >= 128; v = Math.floor(v / 128)) length++;
  return length;
}

/** Offsets reach 2^53, past what 32-bit shifts handle, hence division. */
function writeVarint(target: Buffer, at: number, value: number): number {
  let pos = at;
  let v = value;
  while (v >= 128) {
    target[pos++] = (v % 128) | 128;
    v = Math.floor(v / 128);
  }
  target[pos++] = v;
  return pos;
}

/** A ReadVolumeResponse chunk whose data bytes are still to be filled in (e.g. read from disk into `data`). */
export interface ChunkResponse {
  response: ReadVolumeResponse;
  /** The chunk's payload, a view into the encoded message: fill it before the response is written. */
  data: Buffer;
}

/**
 * Allocates one buffer holding the whole encoded ReadVolumeResponse for a chunk of `length` bytes at
 * `offset`, and a response object pointing at it. Reading straight into `data` means the only copy the
 * payload ever sees on the server is grpc-js's framing.
 */
export function allocateChunkResponse(offset: number, length: number): ChunkResponse {
  const offsetField = offset === 0 ? 0 : 1 + varintLength(offset);
  const dataField = length === 0 ? 0 : 1 + varintLength(length) + length;
  const inner = offsetField + dataField;
  const header = 1 + varintLength(inner) + inner - length;
  const slab = POOLED_PAYLOADS.has(length) ? takeSlab(length) : undefined;
  const frameLength = FRAME_PREFIX_BYTES + header + length;
  const frame = slab === undefined ? Buffer.allocUnsafe(frameLength) : slab.subarray(0, frameLength);
  const message = frame.subarray(FRAME_PREFIX_BYTES);
  let pos = 0;
  message[pos++] = RESPONSE_CHUNK_TAG;
  pos = writeVarint(message, pos, inner);
  if (offset !== 0) {
    message[pos++] = OFFSET_TAG;
    pos = writeVarint(message, pos, offset);
  }
  if (length !== 0) {
    message[pos++] = DATA_TAG;
    pos = writeVarint(message, pos, length);
  }
  const data = message.subarray(pos);
  const response: PreEncoded = {
    payload: { $case: "chunk", chunk: { offset: BigInt(offset), data } },
    [ENCODED]: message,
    [FRAME]: frame,
  };
  if (slab !== undefined) response[SLAB] = slab;
  return { response, data };
}

/**
 * The response's wire form: the complete gRPC frame where framed messages pass through grpc-js (its
 * buffer is then released by readVolumeResponseWritten), else the message, whose pooled buffer goes back to
 * the pool once grpc-js's synchronous copy into its own frame is done. Released once only, however often
 * this is called.
 */
export function serializeReadVolumeResponse(value: ReadVolumeResponse): Buffer {
  const encoded = value as PreEncoded;
  const message = encoded[ENCODED];
  if (message === undefined) return Buffer.from(ReadVolumeResponse.encode(value).finish());
  const frame = encoded[FRAME];
  if (frame !== undefined && preframedSendInstalled()) return markFramed(frame);
  const slab = encoded[SLAB];
  if (slab !== undefined) {
    delete encoded[SLAB];
    queueMicrotask(() => releaseSlab(slab.length - HEADER_ROOM, slab));
  }
  return message;
}

/** Called once a response's write has completed: its buffer, if pooled and not yet released, is free. */
export function readVolumeResponseWritten(value: ReadVolumeResponse): void {
  const encoded = value as PreEncoded;
  const slab = encoded[SLAB];
  if (slab === undefined) return;
  delete encoded[SLAB];
  releaseSlab(slab.length - HEADER_ROOM, slab);
}

/**
 * Decodes a WriteVolumeRequest; a message that is exactly one `chunk` field (what every client sends for
 * data) keeps its payload as a view into the received buffer, which grpc-js allocates per message.
 */
export function deserializeWriteVolumeRequest(bytes: Buffer): WriteVolumeRequest {
  if (bytes.length === 0 || bytes[0] !== REQUEST_CHUNK_TAG) return WriteVolumeRequest.decode(bytes);
  const reader = new BinaryReader(bytes);
  reader.uint32();
  const innerLength = reader.uint32();
  // Anything after the chunk (a repeated or another oneof field) needs the general decoder's last-wins rules.
  if (reader.pos + innerLength !== bytes.length) return WriteVolumeRequest.decode(bytes);
  let offset = 0n;
  let data: Buffer = Buffer.alloc(0);
  while (reader.pos < bytes.length) {
    const tag = reader.uint32();
    if (tag === OFFSET_TAG) {
      offset = BigInt(reader.uint64());
    } else if (tag === DATA_TAG) {
      const view = reader.bytes();
      data = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
    } else {
      if ((tag & 7) === 4 || tag === 0) break;
      reader.skip(tag & 7);
    }
  }
  return { payload: { $case: "chunk", chunk: { offset, data } } };
}
