import { Code } from "@connectrpc/connect";
import { VdiskError } from "../errors.js";

/** Protobuf wire types this reader can step over. */
export const WIRE_VARINT = 0;
export const WIRE_FIXED64 = 1;
export const WIRE_LENGTH_DELIMITED = 2;
export const WIRE_FIXED32 = 5;

/** A malformed message from the server: a protocol fault, reported as INTERNAL like connect does. */
export function malformed(what: string): VdiskError {
  return new VdiskError(`malformed message from server: ${what}`, { status: Code.Internal });
}

/**
 * Reads protobuf fields from a message held as a list of buffers (the pieces it arrived in), so a large
 * `bytes` field can be handed out as views of those pieces without being copied into one buffer. Every
 * read is bounded by `end`; running past it, or an over-long varint, throws a VdiskError (never a
 * RangeError or a silent wrong value).
 */
export class PartsReader {
  private part = 0;
  private at = 0;
  private consumed = 0;

  constructor(
    private readonly parts: readonly Buffer[],
    private readonly length: number,
  ) {}

  /** Bytes read so far. */
  get position(): number {
    return this.consumed;
  }

  get done(): boolean {
    return this.consumed >= this.length;
  }

  byte(): number {
    if (this.consumed >= this.length) throw malformed("truncated field");
    let piece = this.parts[this.part] as Buffer;
    while (this.at >= piece.length) {
      this.part++;
      this.at = 0;
      piece = this.parts[this.part] as Buffer;
    }
    this.consumed++;
    return piece[this.at++] as number;
  }

  /** An unsigned varint up to 2^53 - 1 (offsets and lengths); anything larger is refused. */
  varint(): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = this.byte();
      value += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (!Number.isSafeInteger(value)) throw malformed("varint above 2^53");
        return value;
      }
      scale *= 128;
    }
    throw malformed("varint longer than 10 bytes");
  }

  /** A field key: field number and wire type. */
  tag(): { field: number; wireType: number } {
    const key = this.varint();
    const field = Math.floor(key / 8);
    if (field === 0 || field > 0x1fffffff) throw malformed(`invalid field number ${field}`);
    return { field, wireType: key & 7 };
  }

  /** The length of a length-delimited field, checked against what is left of the message. */
  lengthPrefix(): number {
    const length = this.varint();
    if (length > this.length - this.consumed) throw malformed("length-delimited field past the end");
    return length;
  }

  /** `length` bytes as views of the received pieces (no copy). */
  take(length: number): Buffer[] {
    if (length > this.length - this.consumed) throw malformed("field past the end");
    const out: Buffer[] = [];
    let left = length;
    while (left > 0) {
      const piece = this.parts[this.part] as Buffer;
      if (this.at >= piece.length) {
        this.part++;
        this.at = 0;
        continue;
      }
      const n = Math.min(left, piece.length - this.at);
      out.push(piece.subarray(this.at, this.at + n));
      this.at += n;
      left -= n;
    }
    this.consumed += length;
    return out;
  }

  skip(length: number): void {
    if (length > this.length - this.consumed) throw malformed("field past the end");
    let left = length;
    while (left > 0) {
      const piece = this.parts[this.part] as Buffer;
      const n = Math.min(left, piece.length - this.at);
      if (n === 0) {
        this.part++;
        this.at = 0;
        continue;
      }
      this.at += n;
      left -= n;
    }
    this.consumed += length;
  }

  /** Steps over a field of an unknown number; groups (deprecated, never in these schemas) are refused. */
  skipField(wireType: number): void {
    switch (wireType) {
      case WIRE_VARINT:
        for (let i = 0; this.byte() >= 0x80; i++) if (i >= 9) throw malformed("varint longer than 10 bytes");
        return;
      case WIRE_FIXED64:
        this.skip(8);
        return;
      case WIRE_LENGTH_DELIMITED:
        this.skip(this.lengthPrefix());
        return;
      case WIRE_FIXED32:
        this.skip(4);
        return;
      default:
        throw malformed(`unsupported wire type ${wireType}`);
    }
  }

  /** A reader over the next `length` bytes (a nested message); this reader moves past them. */
  sub(length: number): PartsReader {
    return new PartsReader(this.take(length), length);
  }
}

/** Joins pieces into one buffer; a single piece is returned as is. */
export function joinParts(parts: readonly Buffer[], length: number): Buffer {
  if (parts.length === 1) return parts[0] as Buffer;
  return Buffer.concat(parts as Buffer[], length);
}
