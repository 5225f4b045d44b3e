import { Code } from "@connectrpc/connect";
import type { ZeroDetectionName } from "../enums.js";
import { VdiskError } from "../errors.js";
import { toUint64 } from "../sizes.js";
import type { WritePiece, WriteResult } from "../types.js";
import type { WireChannel } from "./channel.js";
import {
  decodeReadVolumeResponse,
  decodeWriteVolumeResponse,
  encodeReadVolumeRequest,
  encodeWriteChunkHeader,
  encodeWriteFlush,
  encodeWriteOpen,
  encodeWriteZero,
  type ReadVolumeRequestFields,
} from "./data-messages.js";
import { joinParts } from "./parts-reader.js";

/** A ReadVolume piece whose bytes are still the views they arrived in (written with writev). */
export type PartsPiece =
  | { offset: number; parts: Buffer[]; length: number }
  | { offset: number; length: number; zero: true };

/**
 * ReadVolume over the wire channel. Leaving the iteration early cancels the stream, so the server frees
 * the call at once.
 */
export async function* readVolumeParts(
  channel: WireChannel,
  request: ReadVolumeRequestFields,
  signal: AbortSignal | undefined,
): AsyncGenerator<PartsPiece, void, undefined> {
  const call = await channel.start("vdisk.v1.DataService/ReadVolume", signal);
  try {
    call.endRequest(encodeReadVolumeRequest(request));
    for (;;) {
      const message = await call.next();
      if (message === undefined) return;
      const decoded = decodeReadVolumeResponse(message.parts, message.length);
      if (decoded.kind === "chunk")
        yield { offset: decoded.offset, parts: decoded.data, length: decoded.length };
      else if (decoded.kind === "zero") yield { offset: decoded.offset, length: decoded.length, zero: true };
    }
  } catch (err) {
    call.cancel();
    throw err;
  } finally {
    call.cancel();
  }
}

/** The same stream as plain pieces (each chunk's bytes joined, a copy only when it arrived in pieces). */
export async function* readVolumeWire(
  channel: WireChannel,
  request: ReadVolumeRequestFields,
  signal: AbortSignal | undefined,
): AsyncGenerator<{ offset: number; data: Buffer } | { offset: number; length: number; zero: true }> {
  for await (const piece of readVolumeParts(channel, request, signal)) {
    if ("zero" in piece) yield piece;
    else yield { offset: piece.offset, data: joinParts(piece.parts, piece.length) };
  }
}

export interface WireWriteOptions {
  zeroDetection: ZeroDetectionName;
  signal: AbortSignal | undefined;
  /** Largest data message; bigger pieces are split. */
  slice: number;
  /**
   * The caller never touches a piece's buffer again once it has handed it over (uploadFile: a fresh
   * buffer per file read), so it is sent as is. Otherwise each slice is copied before the next piece is
   * asked for, as the caller may reuse its buffer.
   */
  ownsBuffers: boolean;
  /** With ownsBuffers: called with each data slice once the connection has written it out. */
  onSent?: ((view: Buffer) => void) | undefined;
}

/**
 * WriteVolume over the wire channel: each data slice goes out as its 5-byte prefix and message header
 * followed by the data bytes themselves. Resolves with the server's counters.
 */
export async function writeVolumeWire(
  channel: WireChannel,
  name: string,
  pieces: AsyncIterable<WritePiece> | Iterable<WritePiece>,
  options: WireWriteOptions,
): Promise<WriteResult> {
  const call = await channel.start("vdisk.v1.DataService/WriteVolume", options.signal);
  try {
    let sending = await call.write(encodeWriteOpen(name, options.zeroDetection));
    for await (const piece of pieces) {
      if (!sending) break;
      if ("flush" in piece) {
        sending = await call.write(encodeWriteFlush());
      } else if ("zero" in piece) {
        toUint64(piece.offset, "offset");
        toUint64(piece.length, "length");
        sending = await call.write(encodeWriteZero(piece.offset, piece.length));
      } else {
        toUint64(piece.offset + piece.data.length, "offset + data length");
        const data = Buffer.isBuffer(piece.data)
          ? piece.data
          : Buffer.from(piece.data.buffer, piece.data.byteOffset, piece.data.byteLength);
        for (let at = 0; sending && at < data.length; at += options.slice) {
          const end = Math.min(data.length, at + options.slice);
          const slice = options.ownsBuffers ? data.subarray(at, end) : Buffer.from(data.subarray(at, end));
          if (await call.write(encodeWriteChunkHeader(piece.offset + at, slice.length)))
            sending = await call.write(slice, options.ownsBuffers ? options.onSent : undefined);
          else sending = false;
        }
      }
    }
    call.endRequest();
    const message = await call.next();
    if (message === undefined)
      throw new VdiskError("protocol error: missing output message for unary method", {
        status: Code.Unimplemented,
      });
    const extra = await call.next();
    if (extra !== undefined)
      throw new VdiskError("protocol error: received extra output message for unary method", {
        status: Code.Unimplemented,
      });
    return decodeWriteVolumeResponse(message.parts, message.length);
  } catch (err) {
    call.cancel();
    throw VdiskError.from(err);
  }
}
