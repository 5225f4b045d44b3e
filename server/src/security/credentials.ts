import { readFileSync } from "node:fs";
import { ServerCredentials } from "@grpc/grpc-js";
import type { ServerConfig } from "../config.js";

export type TlsConfig = Pick<ServerConfig, "tlsCert" | "tlsKey" | "tlsClientCa">;

/**
 * The listener's credentials. Without a certificate: plaintext (local use and tests). With a client CA,
 * clients must present a certificate chaining to that CA and no other: the CA bundle is always passed,
 * because grpc-js falls back to Node's public root store when it is null (reliability.md §d item 9).
 */
export function serverCredentials(config: TlsConfig): ServerCredentials {
  if (config.tlsCert === undefined || config.tlsKey === undefined) return ServerCredentials.createInsecure();
  const pair = { cert_chain: readFileSync(config.tlsCert), private_key: readFileSync(config.tlsKey) };
  if (config.tlsClientCa === undefined) return ServerCredentials.createSsl(null, [pair], false);
  return ServerCredentials.createSsl(readFileSync(config.tlsClientCa), [pair], true);
}
