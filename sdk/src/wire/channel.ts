import * as http2 from "node:http2";
import { Code } from "@connectrpc/connect";
import { abortError, VdiskError } from "../errors.js";
import type { TlsOptions, TokenSource } from "../transport.js";
import { Deframer, type ReceivedMessage } from "./deframer.js";
import { checkResponseHeaders, checkTrailers, resetError, toHeaders, transportError } from "./status.js";

/** What a wire channel needs: the same settings the connect transport gets. */
export interface WireSettings {
  baseUrl: string;
  tls?: TlsOptions | undefined;
  token?: TokenSource | undefined;
  maxMessageBytes: number;
  streamWindowBytes: number;
  connectionWindowBytes: number;
}

/**
 * The largest DATA frame HTTP/2 allows. Advertised so a peer that honours it can send a 1 MiB message in
 * one frame instead of 64 frames of 16 KiB.
 */
const MAX_FRAME_SIZE = 2 ** 24 - 1;

/**
 * One HTTP/2 connection for gRPC calls made by hand (the byte-streaming data RPCs). Connects on first use
 * and again after the connection is lost or told to go away; holds the event loop open only while a call
 * is running, as connect's session manager does.
 */
export class WireChannel {
  private session: http2.ClientHttp2Session | undefined;
  private connecting: Promise<http2.ClientHttp2Session> | undefined;
  private active = 0;
  private closed = false;
  private readonly pathPrefix: string;

  constructor(readonly settings: WireSettings) {
    this.pathPrefix = new URL(settings.baseUrl).pathname.replace(/\/+$/, "");
  }

  /** Destroys the connection; running calls fail and later ones are refused. */
  close(): void {
    this.closed = true;
    this.session?.destroy();
    this.session = undefined;
  }

  private connect(): Promise<http2.ClientHttp2Session> {
    const current = this.session;
    if (current !== undefined && !current.closed && !current.destroyed) return Promise.resolve(current);
    this.connecting ??= new Promise<http2.ClientHttp2Session>((resolve, reject) => {
      const options: http2.SecureClientSessionOptions = {
        settings: { initialWindowSize: this.settings.streamWindowBytes, maxFrameSize: MAX_FRAME_SIZE },
        maxSessionMemory: 64,
      };
      const tls = this.settings.tls;
      if (tls?.ca !== undefined) options.ca = tls.ca;
      if (tls?.cert !== undefined) options.cert = tls.cert;
      if (tls?.key !== undefined) options.key = tls.key;
      const session = http2.connect(this.settings.baseUrl, options);
      const forget = () => {
        if (this.session === session) this.session = undefined;
      };
      const failed = (err: unknown) => {
        forget();
        session.destroy();
        reject(transportError(err));
      };
      session.once("error", failed);
      session.once("close", forget);
      session.once("goaway", forget);
      session.once("connect", () => {
        session.off("error", failed);
        // Errors reach the streams that were open; the session itself only needs replacing.
        session.on("error", forget);
        session.setLocalWindowSize(this.settings.connectionWindowBytes);
        if (this.closed) {
          session.destroy();
          reject(new VdiskError("client closed", { status: Code.Canceled }));
          return;
        }
        if (this.active === 0) session.unref();
        this.session = session;
        resolve(session);
      });
    }).finally(() => {
      this.connecting = undefined;
    });
    return this.connecting;
  }

  /** Starts a call of `method` ("package.Service/Method"); the caller sends the request body. */
  async start(method: string, signal: AbortSignal | undefined): Promise<WireCall> {
    if (signal?.aborted) throw abortError(signal);
    if (this.closed) throw new VdiskError("client closed", { status: Code.Canceled });
    const token = this.settings.token;
    const headers: http2.OutgoingHttpHeaders = {
      ":method": "POST",
      ":path": `${this.pathPrefix}/${method}`,
      "content-type": "application/grpc+proto",
      te: "trailers",
      "user-agent": "vdisk-sdk-wire",
    };
    if (token !== undefined)
      headers.authorization = `Bearer ${typeof token === "string" ? token : await token()}`;
    const session = await this.connect();
    if (signal?.aborted) throw abortError(signal);
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(headers);
    } catch (err) {
      throw transportError(err);
    }
    this.active++;
    session.ref();
    const call = new WireCall(stream, this.settings.maxMessageBytes, signal);
    stream.once("close", () => {
      this.active--;
      if (this.active === 0 && !session.destroyed) session.unref();
    });
    return call;
  }
}

/** Received bytes a call buffers before it stops reading (flow control then holds the server back). */
const HIGH_WATER_BYTES = 8 * 1024 * 1024;

/**
 * One gRPC call on an HTTP/2 stream: sends framed messages, receives and deframes the response, and turns
 * the end of the stream into OK or a VdiskError. An abort cancels the stream (RST_STREAM CANCEL).
 */
export class WireCall {
  private readonly deframer: Deframer;
  private readonly queue: ReceivedMessage[] = [];
  private queuedBytes = 0;
  private failure: VdiskError | undefined;
  private headers: Headers | undefined;
  private headerStatus = false;
  private trailers: Headers | undefined;
  private closed = false;
  private wake: (() => void) | undefined;
  private readonly onAbort: () => void;

  constructor(
    private readonly stream: http2.ClientHttp2Stream,
    maxMessageBytes: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.deframer = new Deframer(maxMessageBytes);
    stream.on("response", (raw) => {
      try {
        const checked = checkResponseHeaders(raw);
        this.headers = checked.headers;
        this.headerStatus = checked.statusInHeaders;
      } catch (err) {
        this.fail(err as VdiskError);
      }
    });
    stream.on("data", (chunk: Buffer) => {
      if (this.failure !== undefined) return;
      try {
        this.deframer.push(chunk, (message) => {
          this.queue.push(message);
          this.queuedBytes += message.length;
        });
      } catch (err) {
        this.fail(err as VdiskError);
        return;
      }
      if (this.queuedBytes >= HIGH_WATER_BYTES) stream.pause();
      this.notify();
    });
    stream.on("trailers", (raw) => {
      this.trailers = toHeaders(raw);
    });
    stream.on("error", (err) => {
      // Once the server has said how the call ended, a late write error (it closed first) is noise.
      if (this.trailers !== undefined || this.headerStatus) return;
      const code = stream.rstCode ?? 0;
      this.fail(
        code !== 0 && code !== http2.constants.NGHTTP2_NO_ERROR ? resetError(code) : transportError(err),
      );
    });
    stream.on("close", () => {
      this.closed = true;
      this.signal?.removeEventListener("abort", this.onAbort);
      this.notify();
    });
    this.onAbort = () => {
      if (this.signal) this.fail(abortError(this.signal));
    };
    signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  /** True once the call has failed or the stream has closed: further sends are pointless. */
  get over(): boolean {
    return this.failure !== undefined || this.closed;
  }

  /** Ends the call with `error` and cancels the stream if it is still open. */
  fail(error: VdiskError): void {
    this.failure ??= error;
    this.cancel();
    this.notify();
  }

  /** Cancels the stream (RST_STREAM CANCEL) unless it has already closed. */
  cancel(): void {
    if (!this.stream.closed && !this.stream.destroyed) this.stream.close(http2.constants.NGHTTP2_CANCEL);
  }

  /**
   * Writes framed bytes. Resolves at once while the stream takes them, else when it drains. Returns false
   * when the call is already over (the server ended it, or it failed): the caller stops sending and reads
   * the outcome from `finish()` / `next()`.
   */
  async write(bytes: Buffer, onWritten?: (bytes: Buffer) => void): Promise<boolean> {
    if (this.over) return false;
    const accepted =
      onWritten === undefined
        ? this.stream.write(bytes)
        : this.stream.write(bytes, (err) => {
            // After a failure the buffer may still be referenced: it is left to the GC, never reused.
            if (!err) onWritten(bytes);
          });
    if (accepted) return true;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.stream.off("drain", done);
        this.stream.off("close", done);
        resolve();
      };
      this.stream.once("drain", done);
      this.stream.once("close", done);
    });
    return !this.over;
  }

  /** Half-closes the request side. */
  endRequest(bytes?: Buffer): void {
    if (this.over) return;
    if (bytes === undefined) this.stream.end();
    else this.stream.end(bytes);
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** The next response message, or undefined at a clean end (status OK). Throws the call's error. */
  async next(): Promise<ReceivedMessage | undefined> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure;
      const message = this.queue.shift();
      if (message !== undefined) {
        this.queuedBytes -= message.length;
        if (this.queuedBytes < HIGH_WATER_BYTES / 2 && this.stream.isPaused()) this.stream.resume();
        return message;
      }
      if (this.closed) {
        this.settle();
        return undefined;
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  /** Decides how a closed stream ended; throws its error. */
  private settle(): void {
    const fail = (error: VdiskError) => {
      this.failure = error;
      throw error;
    };
    if (this.headers === undefined) {
      const code = this.stream.rstCode ?? 0;
      fail(
        code !== 0
          ? resetError(code)
          : new VdiskError("stream closed before the server answered", { status: Code.Unavailable }),
      );
      return;
    }
    try {
      if (this.headerStatus) checkTrailers(this.headers, new Headers());
      else if (this.trailers !== undefined) checkTrailers(this.trailers, this.headers);
      else {
        const code = this.stream.rstCode ?? 0;
        fail(
          code !== 0
            ? resetError(code)
            : new VdiskError("protocol error: missing status", { status: Code.Internal }),
        );
      }
    } catch (err) {
      fail(err as VdiskError);
    }
    if (this.deframer.partial)
      fail(new VdiskError("protocol error: the stream ended inside a message", { status: Code.Internal }));
  }
}
