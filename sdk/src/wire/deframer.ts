import { Code } from "@connectrpc/connect";
import { VdiskError } from "../errors.js";
import { malformed } from "./parts-reader.js";

/** One received gRPC message: its bytes as views of the pieces it arrived in. */
export interface ReceivedMessage {
  parts: Buffer[];
  length: number;
}

/**
 * Splits a gRPC response body (5-byte prefix + message, repeated) into messages without copying them:
 * a message spanning several received pieces becomes a list of views. Refuses compressed messages (none
 * is ever negotiated) and messages longer than the limit, before buffering them.
 */
export class Deframer {
  private readonly prefix = Buffer.alloc(5);
  private prefixFill = 0;
  private expected = -1;
  private parts: Buffer[] = [];
  private filled = 0;

  constructor(private readonly maxMessageBytes: number) {}

  /** True when the body stopped in the middle of a message. */
  get partial(): boolean {
    return this.prefixFill > 0 || this.expected >= 0;
  }

  /** Feeds a received piece; `emit` is called for every message it completes. */
  push(chunk: Buffer, emit: (message: ReceivedMessage) => void): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.expected < 0) {
        const n = Math.min(5 - this.prefixFill, chunk.length - at);
        chunk.copy(this.prefix, this.prefixFill, at, at + n);
        this.prefixFill += n;
        at += n;
        if (this.prefixFill < 5) return;
        this.prefixFill = 0;
        this.startMessage();
        if (this.expected === 0) this.finishMessage(emit);
        continue;
      }
      const n = Math.min(this.expected - this.filled, chunk.length - at);
      this.parts.push(at === 0 && n === chunk.length ? chunk : chunk.subarray(at, at + n));
      this.filled += n;
      at += n;
      if (this.filled === this.expected) this.finishMessage(emit);
    }
  }

  private startMessage(): void {
    const flags = this.prefix[0] as number;
    if (flags & 1) throw malformed("compressed message, but no compression was negotiated");
    if (flags !== 0) throw malformed(`unknown message flags 0x${flags.toString(16)}`);
    const length = this.prefix.readUInt32BE(1);
    if (length > this.maxMessageBytes)
      throw new VdiskError(
        `message size ${length} is larger than configured readMaxBytes ${this.maxMessageBytes}`,
        {
          status: Code.ResourceExhausted,
        },
      );
    this.expected = length;
  }

  private finishMessage(emit: (message: ReceivedMessage) => void): void {
    const message = { parts: this.parts, length: this.expected };
    this.parts = [];
    this.filled = 0;
    this.expected = -1;
    emit(message);
  }
}
