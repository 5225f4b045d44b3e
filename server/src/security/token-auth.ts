import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  type Metadata,
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  ServerListenerBuilder,
  status,
} from "@grpc/grpc-js";

/** Health must answer load balancers and probes that carry no credentials. */
const UNAUTHENTICATED_SERVICES = ["/grpc.health.v1.Health/"];

/** Reads one token per line; blank lines and lines starting with # are ignored. An empty file is an error. */
export function loadTokens(file: string): string[] {
  const tokens = readFileSync(file, "utf8")
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
  if (tokens.length === 0) throw new Error(`token file ${file} holds no tokens`);
  return tokens;
}

/**
 * Compares digests rather than the tokens themselves: timingSafeEqual needs equal lengths, and hashing
 * first keeps the comparison time independent of both the length and the content of the presented token.
 */
function tokenMatcher(tokens: readonly string[]): (presented: string) => boolean {
  const digest = (t: string) => createHash("sha256").update(t).digest();
  const known = tokens.map(digest);
  return (presented) => {
    const d = digest(presented);
    let ok = false;
    for (const k of known) ok = timingSafeEqual(k, d) || ok;
    return ok;
  };
}

function bearer(metadata: Metadata): string | undefined {
  const values = metadata.get("authorization");
  if (values.length !== 1) return undefined;
  const m = /^Bearer ([^\s]+)$/i.exec(String(values[0]));
  return m?.[1];
}

/**
 * Rejects every call without a known bearer token with UNAUTHENTICATED before its handler sees anything.
 * The check runs on the request metadata, the first thing a call receives.
 */
export function bearerTokenInterceptor(tokens: readonly string[]): ServerInterceptor {
  const matches = tokenMatcher(tokens);
  return (method, call: ServerInterceptingCallInterface) => {
    if (UNAUTHENTICATED_SERVICES.some((prefix) => method.path.startsWith(prefix)))
      return new ServerInterceptingCall(call);
    return new ServerInterceptingCall(call, {
      start: (next) => {
        const listener = new ServerListenerBuilder()
          .withOnReceiveMetadata((metadata, nextMetadata) => {
            const token = bearer(metadata);
            if (token !== undefined && matches(token)) {
              nextMetadata(metadata);
              return;
            }
            call.sendStatus({
              code: status.UNAUTHENTICATED,
              details:
                token === undefined
                  ? "missing authorization: Bearer <token>"
                  : "the bearer token is not valid",
            });
          })
          .build();
        next(listener);
      },
    });
  };
}
