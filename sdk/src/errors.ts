import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { type ErrorInfo, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

/**
 * gRPC status of a failed call or job, as a lower-case name (the Connect spelling of the gRPC codes).
 * `"canceled"` is also what an aborted call or job rejects with.
 */
export type VdiskErrorCode =
  | "canceled"
  | "unknown"
  | "invalid_argument"
  | "deadline_exceeded"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "resource_exhausted"
  | "failed_precondition"
  | "aborted"
  | "out_of_range"
  | "unimplemented"
  | "internal"
  | "unavailable"
  | "data_loss"
  | "unauthenticated";

const CODE_NAMES: Record<number, VdiskErrorCode> = {
  [Code.Canceled]: "canceled",
  [Code.Unknown]: "unknown",
  [Code.InvalidArgument]: "invalid_argument",
  [Code.DeadlineExceeded]: "deadline_exceeded",
  [Code.NotFound]: "not_found",
  [Code.AlreadyExists]: "already_exists",
  [Code.PermissionDenied]: "permission_denied",
  [Code.ResourceExhausted]: "resource_exhausted",
  [Code.FailedPrecondition]: "failed_precondition",
  [Code.Aborted]: "aborted",
  [Code.OutOfRange]: "out_of_range",
  [Code.Unimplemented]: "unimplemented",
  [Code.Internal]: "internal",
  [Code.Unavailable]: "unavailable",
  [Code.DataLoss]: "data_loss",
  [Code.Unauthenticated]: "unauthenticated",
};

/** Maps a numeric gRPC status code to its {@link VdiskErrorCode} name; unknown numbers become `"unknown"`. */
export function codeName(status: number): VdiskErrorCode {
  return CODE_NAMES[status] ?? "unknown";
}

// A registered symbol, so two copies of the SDK (or two realms) still recognise each other's errors.
const BRAND = Symbol.for("@vdisk/sdk.VdiskError");

/** Fields accepted by the {@link VdiskError} constructor. */
export interface VdiskErrorInit {
  /** Numeric gRPC status code (connect's `Code`). */
  status: number;
  /** The server's machine-readable reason (`google.rpc.ErrorInfo.reason`), e.g. `"VOLUME_NOT_FOUND"`. */
  reason?: string | undefined;
  /** The reason's domain (`"vdisk.dev"` for server errors). */
  domain?: string | undefined;
  /** `ErrorInfo.metadata`: structured facts about the failure (volume name, limits, …). */
  metadata?: Record<string, string> | undefined;
  /** The original error, kept for logging. */
  cause?: unknown;
}

/**
 * The one error type every SDK method rejects with (besides `RangeError`/`TypeError` for bad arguments).
 * `code` is the gRPC status name, `reason` the server's `ErrorInfo.reason`.
 * `instanceof` works across copies of the SDK and across realms.
 */
export class VdiskError extends Error {
  /** gRPC status name, e.g. `"not_found"`. */
  readonly code: VdiskErrorCode;
  /** Numeric gRPC status code. */
  readonly status: number;
  /** `google.rpc.ErrorInfo.reason` sent by the server, or `undefined` when none was sent. */
  readonly reason: string | undefined;
  /** `google.rpc.ErrorInfo.domain`, or `undefined`. */
  readonly domain: string | undefined;
  /** `google.rpc.ErrorInfo.metadata` (empty when none was sent). */
  readonly metadata: Readonly<Record<string, string>>;

  /**
   * @param message - human-readable message, without the code prefix
   * @param init - code, reason and details
   */
  constructor(message: string, init: VdiskErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = "VdiskError";
    this.status = init.status;
    this.code = codeName(init.status);
    this.reason = init.reason || undefined;
    this.domain = init.domain || undefined;
    this.metadata = Object.freeze({ ...(init.metadata ?? {}) });
    Object.defineProperty(this, BRAND, { value: true });
  }

  /** Recognises VdiskErrors made by any copy of the SDK, in any realm. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[BRAND] === true;
  }

  /**
   * Converts anything thrown by a call into a VdiskError: ConnectErrors keep their code and ErrorInfo,
   * AbortErrors become `"canceled"`, timeouts `"deadline_exceeded"`, anything else `"unknown"`.
   */
  static from(reason: unknown): VdiskError {
    if (reason instanceof VdiskError) return reason;
    if (reason instanceof ConnectError) {
      const info = firstErrorInfo(reason.findDetails(ErrorInfoSchema));
      return new VdiskError(reason.rawMessage, {
        status: reason.code,
        reason: info?.reason,
        domain: info?.domain,
        metadata: info?.metadata,
        cause: reason,
      });
    }
    if (reason instanceof Error) {
      if (reason.name === "AbortError")
        return new VdiskError(reason.message || "operation aborted", {
          status: Code.Canceled,
          cause: reason,
        });
      if (reason.name === "TimeoutError")
        return new VdiskError(reason.message || "operation timed out", {
          status: Code.DeadlineExceeded,
          cause: reason,
        });
      return new VdiskError(reason.message, { status: Code.Unknown, cause: reason });
    }
    return new VdiskError(String(reason), { status: Code.Unknown, cause: reason });
  }

  /** Builds the error a FAILED or CANCELLED job carries in its `error` status. */
  static fromStatus(status: Status): VdiskError {
    const infos: ErrorInfo[] = [];
    for (const detail of status.details) {
      const info = anyUnpack(detail, ErrorInfoSchema);
      if (info) infos.push(info);
    }
    const info = firstErrorInfo(infos);
    return new VdiskError(status.message, {
      status: status.code,
      reason: info?.reason,
      domain: info?.domain,
      metadata: info?.metadata,
    });
  }
}

function firstErrorInfo(infos: ErrorInfo[]): ErrorInfo | undefined {
  return infos[0];
}

/** Runs an async call and rethrows whatever it throws as a {@link VdiskError}. @internal */
export async function mapErrors<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw VdiskError.from(err);
  }
}

/** The error an aborted operation rejects with: the signal's reason when it is a VdiskError, else `"canceled"`. @internal */
export function abortError(signal: AbortSignal): VdiskError {
  const reason: unknown = signal.reason;
  if (reason instanceof VdiskError) return reason;
  if (reason instanceof Error && reason.name === "TimeoutError") return VdiskError.from(reason);
  return new VdiskError("operation canceled", { status: Code.Canceled, cause: reason });
}
