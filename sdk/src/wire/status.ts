import type { IncomingHttpHeaders } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { validateResponse, validateTrailer } from "@connectrpc/connect/protocol-grpc";
import { VdiskError } from "../errors.js";

/**
 * gRPC status handling for the wire data path. The header and trailer checks are connect's own, so a
 * failure reads exactly as it does on every other call (same codes, messages and ErrorInfo details).
 */

export function toHeaders(raw: IncomingHttpHeaders): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(raw)) {
    if (name.startsWith(":") || value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) headers.append(name, v);
    else headers.append(name, String(value));
  }
  return headers;
}

/**
 * Checks response headers. Returns whether they already carry the status (a trailers-only response);
 * throws the call's error when they carry a failure, or when the HTTP status or content type is wrong.
 */
export function checkResponseHeaders(raw: IncomingHttpHeaders): {
  headers: Headers;
  statusInHeaders: boolean;
} {
  const headers = toHeaders(raw);
  try {
    const { foundStatus, headerError } = validateResponse(Number(raw[":status"] ?? 0), headers);
    if (headerError) throw headerError;
    const encoding = headers.get("grpc-encoding");
    if (encoding !== null && encoding.toLowerCase() !== "identity")
      throw new ConnectError(`unsupported response encoding "${encoding}"`, Code.Internal);
    return { headers, statusInHeaders: foundStatus };
  } catch (err) {
    throw VdiskError.from(err);
  }
}

/** Throws the call's error from its trailers (or its trailers-only headers); returns when the status is OK. */
export function checkTrailers(trailers: Headers, headers: Headers): void {
  try {
    validateTrailer(trailers, headers);
  } catch (err) {
    throw VdiskError.from(err);
  }
}

const RESET_CODES: Record<number, [string, number]> = {
  1: ["PROTOCOL_ERROR", Code.Internal],
  2: ["INTERNAL_ERROR", Code.Internal],
  3: ["FLOW_CONTROL_ERROR", Code.Internal],
  4: ["SETTINGS_TIMEOUT", Code.Internal],
  6: ["FRAME_SIZE_ERROR", Code.Internal],
  7: ["REFUSED_STREAM", Code.Unavailable],
  8: ["CANCEL", Code.Canceled],
  10: ["CONNECT_ERROR", Code.Internal],
  11: ["ENHANCE_YOUR_CALM", Code.ResourceExhausted],
  12: ["INADEQUATE_SECURITY", Code.PermissionDenied],
  13: ["HTTP_1_1_REQUIRED", Code.PermissionDenied],
};

/** The error of a stream the server reset before sending a status (as connect maps it). */
export function resetError(rstCode: number): VdiskError {
  const known = RESET_CODES[rstCode];
  const name = known?.[0] ?? `0x${rstCode.toString(16)}`;
  return new VdiskError(`http/2 stream closed with error code ${name} (0x${rstCode.toString(16)})`, {
    status: known?.[1] ?? Code.Internal,
  });
}

const UNAVAILABLE_CAUSES = new Set(["ETIMEDOUT", "ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED"]);
const ABORTED_CAUSES = new Set(["ERR_STREAM_DESTROYED", "ERR_HTTP2_INVALID_STREAM", "ECONNRESET"]);

/** A transport failure (connection refused, reset, …) as the VdiskError connect would give. */
export function transportError(reason: unknown): VdiskError {
  if (reason instanceof VdiskError) return reason;
  const code = (reason as { code?: unknown } | undefined)?.code;
  let status: number = Code.Internal;
  if (typeof code === "string" && UNAVAILABLE_CAUSES.has(code)) status = Code.Unavailable;
  else if (typeof code === "string" && ABORTED_CAUSES.has(code)) status = Code.Aborted;
  const message = reason instanceof Error ? reason.message : String(reason);
  return new VdiskError(message, { status, cause: reason });
}
