import { Metadata, type StatusObject, status } from "@grpc/grpc-js";
import { EngineError, type EngineErrorCode } from "@vdisk/engine";
import { ErrorInfo } from "../gen/google/rpc/error_details.js";
import { Status as RpcStatus } from "../gen/google/rpc/status.js";

export const ERROR_DOMAIN = "vdisk.dev";
const ERROR_INFO_TYPE_URL = "type.googleapis.com/google.rpc.ErrorInfo";
const INTERNAL_MESSAGE = "internal error (details are in the server log)";

/**
 * THE mapping from engine error codes to gRPC status codes (DESIGN §2 Errors, style-anchors §E).
 * BUSY is a conflicting concurrent change that a retry can resolve, hence ABORTED; IO and INTERNAL are
 * not the caller's fault and are not known to be transient, hence INTERNAL.
 */
export const ENGINE_CODE_TO_STATUS: Readonly<Record<EngineErrorCode, status>> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  OUT_OF_RANGE: status.OUT_OF_RANGE,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  READ_ONLY: status.FAILED_PRECONDITION,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  PERMISSION: status.PERMISSION_DENIED,
  UNSUPPORTED: status.UNIMPLEMENTED,
  BUSY: status.ABORTED,
  NO_SPACE: status.RESOURCE_EXHAUSTED,
  CORRUPT: status.DATA_LOSS,
  FSYNC_FAILED: status.DATA_LOSS,
  IO: status.INTERNAL,
  CANCELLED: status.CANCELLED,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  INTERNAL: status.INTERNAL,
};

/** A condition of the RPC layer itself (unimplemented RPC, draining, admission) rather than the engine. */
export class RpcError extends Error {
  override readonly name = "RpcError";
  constructor(
    readonly code: status,
    message: string,
    readonly reason: string,
    readonly metadata: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function unimplemented(rpc: string, missing: string): RpcError {
  return new RpcError(status.UNIMPLEMENTED, `${rpc} is not implemented yet (${missing})`, "NOT_IMPLEMENTED", {
    rpc,
  });
}

export interface WireError {
  code: status;
  message: string;
  reason: string;
  metadata: Record<string, string>;
  /** True when the message was replaced by a generic one and the original must be logged. */
  hidden: boolean;
}

/** Classifies anything thrown into what may be sent to a client. */
export function toWireError(err: unknown): WireError {
  if (err instanceof RpcError)
    return {
      code: err.code,
      message: err.message,
      reason: err.reason,
      metadata: err.metadata,
      hidden: false,
    };
  const e = EngineError.from(err);
  const code = ENGINE_CODE_TO_STATUS[e.code] ?? status.INTERNAL;
  // INTERNAL means a bug (or an unclassified failure): its text may carry paths or internals, so it stays in the log.
  if (e.code === "INTERNAL")
    return { code, message: INTERNAL_MESSAGE, reason: "INTERNAL", metadata: {}, hidden: true };
  return { code, message: e.message, reason: e.reason, metadata: e.metadata, hidden: false };
}

/** google.rpc.Status with one ErrorInfo detail: the rich form of an error, for trailers and for job records. */
export function toRpcStatus(wire: Pick<WireError, "code" | "message" | "reason" | "metadata">): RpcStatus {
  const info = ErrorInfo.encode({
    reason: wire.reason,
    domain: ERROR_DOMAIN,
    metadata: wire.metadata,
  }).finish();
  return {
    code: wire.code,
    message: wire.message,
    details: [{ typeUrl: ERROR_INFO_TYPE_URL, value: Buffer.from(info) }],
  };
}

/**
 * The grpc-js status object for a failed call: code, message, and the google.rpc.Status in the
 * `grpc-status-details-bin` trailer, which Connect, grpc-go and grpcio clients decode into typed details.
 */
export function toGrpcStatus(
  err: unknown,
): Partial<StatusObject> & { code: status; details: string; metadata: Metadata } {
  const wire = toWireError(err);
  const metadata = new Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(RpcStatus.encode(toRpcStatus(wire)).finish()));
  return { code: wire.code, details: wire.message, metadata };
}

/** Decodes the ErrorInfo carried in a google.rpc.Status, if any (used by tests and job consumers). */
export function errorInfoOf(statusBytes: Uint8Array): { status: RpcStatus; info: ErrorInfo | undefined } {
  const decoded = RpcStatus.decode(statusBytes);
  const any = decoded.details.find((d) => d.typeUrl === ERROR_INFO_TYPE_URL);
  return { status: decoded, info: any === undefined ? undefined : ErrorInfo.decode(any.value) };
}
