import { readFileSync } from "node:fs";
import { createVdiskClient, type TlsOptions, type VdiskClient } from "@vdisk/sdk";
import { UsageError } from "./exit-codes.js";

/** The global options every client command shares. */
export interface GlobalOptions {
  server: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  token?: string;
  json?: boolean;
}

export const DEFAULT_SERVER = "127.0.0.1:50051";
// Unary calls should answer fast; job, read and write streams have no deadline in the SDK.
const UNARY_TIMEOUT_MS = 30_000;

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${what} ${path}: ${(err as Error).message}`);
  }
}

/** `HOST:PORT` (or a full `http://`/`https://` URL) → base URL; TLS material turns a bare address into https. */
export function baseUrlOf(server: string, tls: boolean): string {
  if (/^https?:\/\//.test(server)) return server;
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(server))
    throw new UsageError(`--server must be HOST:PORT (e.g. 127.0.0.1:50051); got "${server}"`);
  return `${tls ? "https" : "http"}://${server}`;
}

export function clientFor(options: GlobalOptions): VdiskClient {
  const tlsGiven = Boolean(options.tlsCa || options.tlsCert || options.tlsKey);
  if (Boolean(options.tlsCert) !== Boolean(options.tlsKey))
    throw new UsageError("--tls-cert and --tls-key go together (mutual TLS needs both)");
  const tls: TlsOptions = {};
  if (options.tlsCa) tls.ca = readPem(options.tlsCa, "CA certificate");
  if (options.tlsCert) tls.cert = readPem(options.tlsCert, "client certificate");
  if (options.tlsKey) tls.key = readPem(options.tlsKey, "client key");
  return createVdiskClient({
    baseUrl: baseUrlOf(options.server, tlsGiven),
    ...(tlsGiven ? { tls } : {}),
    ...(options.token ? { token: options.token } : {}),
    timeoutMs: UNARY_TIMEOUT_MS,
  });
}
