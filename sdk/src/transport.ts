import type * as http2 from "node:http2";
import type { Interceptor, Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { MiB } from "./sizes.js";

/** TLS material for `https://` base URLs (PEM strings or buffers). */
export interface TlsOptions {
  /** Trusted CA certificate(s) for the server; default: the system roots. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Client certificate, for mutual TLS. */
  cert?: string | Buffer;
  /** Client private key, for mutual TLS. */
  key?: string | Buffer;
}

/** A bearer token, or a function producing one per call (e.g. to refresh it). */
export type TokenSource = string | (() => string | Promise<string>);

/** @internal */
export interface GrpcTransportSettings {
  baseUrl: string;
  tls?: TlsOptions | undefined;
  token?: TokenSource | undefined;
  maxMessageBytes: number;
  streamWindowBytes: number;
  connectionWindowBytes: number;
}

/** @internal */
export interface OwnedTransport {
  transport: Transport;
  close(): void;
}

/** Default per-message limit: a 4 MiB data chunk plus framing, in both directions. */
export const DEFAULT_MAX_MESSAGE_BYTES = 8 * MiB;
// Node's HTTP/2 default windows (64 KiB) cap bulk streams at ~200 MB/s even on loopback; 4 MiB per stream and
// 32 MiB per connection let 256 KiB–1 MiB chunks flow at ~1 GB/s (reference/performance.md §4).
const DEFAULT_STREAM_WINDOW = 4 * MiB;
const DEFAULT_CONNECTION_WINDOW = 32 * MiB;

/** @internal */
export function authInterceptor(token: TokenSource): Interceptor {
  return (next) => async (req) => {
    const value = typeof token === "string" ? token : await token();
    req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
}

/**
 * The session manager connect-node would make, plus one step it cannot be configured to do: raising the
 * connection-level receive window (`setLocalWindowSize`) on every new HTTP/2 session. The per-stream window
 * comes from the session settings.
 */
class WideWindowSessionManager {
  private readonly inner: Http2SessionManager;
  private readonly widened = new WeakSet<http2.Http2Session>();

  constructor(
    url: string,
    options: http2.ClientSessionOptions | http2.SecureClientSessionOptions,
    private readonly connectionWindowBytes: number,
  ) {
    this.inner = new Http2SessionManager(url, { idleConnectionTimeoutMs: 15 * 60_000 }, options);
  }

  get authority(): string {
    return this.inner.authority;
  }

  async request(
    method: string,
    path: string,
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, "signal">,
  ): Promise<http2.ClientHttp2Stream> {
    const stream = await this.inner.request(method, path, headers, options);
    const session = stream.session;
    if (session && !this.widened.has(session) && !session.destroyed) {
      this.widened.add(session);
      session.setLocalWindowSize(this.connectionWindowBytes);
    }
    return stream;
  }

  notifyResponseByteRead(stream: http2.ClientHttp2Stream): void {
    this.inner.notifyResponseByteRead(stream);
  }

  abort(reason?: Error): void {
    this.inner.abort(reason);
  }
}

/** Builds the HTTP/2 gRPC transport the client uses by default. @internal */
export function createVdiskGrpcTransport(settings: GrpcTransportSettings): OwnedTransport {
  const nodeOptions: http2.SecureClientSessionOptions = {
    settings: { initialWindowSize: settings.streamWindowBytes },
    maxSessionMemory: 64,
  };
  if (settings.tls?.ca !== undefined) nodeOptions.ca = settings.tls.ca;
  if (settings.tls?.cert !== undefined) nodeOptions.cert = settings.tls.cert;
  if (settings.tls?.key !== undefined) nodeOptions.key = settings.tls.key;
  const sessionManager = new WideWindowSessionManager(
    settings.baseUrl,
    nodeOptions,
    settings.connectionWindowBytes,
  );
  const transport = createGrpcTransport({
    baseUrl: settings.baseUrl,
    sessionManager,
    interceptors: settings.token === undefined ? [] : [authInterceptor(settings.token)],
    // Disk data is mostly incompressible or already sparse-encoded; gzip would cap throughput near 50 MB/s.
    acceptCompression: [],
    readMaxBytes: settings.maxMessageBytes,
    writeMaxBytes: settings.maxMessageBytes,
  });
  return { transport, close: () => sessionManager.abort() };
}

/** @internal */
export const TRANSPORT_DEFAULTS = {
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  streamWindowBytes: DEFAULT_STREAM_WINDOW,
  connectionWindowBytes: DEFAULT_CONNECTION_WINDOW,
};
