/**
 * The engine's one error type. Codes are strings (never numbers): grpc-js would treat a numeric
 * `code` as a gRPC status, so mapping to the wire happens explicitly, once, in the server.
 */
export type EngineErrorCode =
  | "INVALID_ARGUMENT" // malformed request or image option (bad size, bad cluster size, bad name)
  | "OUT_OF_RANGE" // offset/length past the end of the image, or a value above 2^53
  | "NOT_FOUND" // missing file/volume/job
  | "ALREADY_EXISTS" // create over an existing file/volume
  | "READ_ONLY" // write to an image opened read-only, EROFS
  | "FAILED_PRECONDITION" // state forbids the operation (in use, has dependants, locked by QEMU, ERROR state)
  | "PERMISSION" // EACCES/EPERM on a host file
  | "UNSUPPORTED" // the format or host lacks the feature (and no fallback was allowed)
  | "BUSY" // conflicting concurrent change (retryable)
  | "NO_SPACE" // ENOSPC, EDQUOT, EFBIG, quotas
  | "CORRUPT" // inconsistent or hostile image metadata
  | "IO" // EIO and other host I/O failures
  | "FSYNC_FAILED" // an fsync failed: permanent for the volume until an operator acts
  | "CANCELLED" // an AbortSignal fired
  | "DEADLINE_EXCEEDED"
  | "INTERNAL"; // a bug: an invariant did not hold

const engineErrorMarker = Symbol.for("vdisk.EngineError");

export interface EngineErrorOptions {
  /** Machine-readable reason, UPPER_SNAKE_CASE, sent as google.rpc.ErrorInfo.reason (e.g. "QCOW2_BACKING_FILE"). */
  reason?: string;
  /** Extra key/values for ErrorInfo.metadata; never host paths. */
  metadata?: Record<string, string>;
  cause?: unknown;
}

export class EngineError extends Error {
  override readonly name = "EngineError";
  readonly code: EngineErrorCode;
  readonly reason: string;
  readonly metadata: Record<string, string>;

  constructor(code: EngineErrorCode, message: string, options: EngineErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.reason = options.reason ?? code;
    this.metadata = options.metadata ?? {};
    Object.defineProperty(this, engineErrorMarker, { value: true });
  }

  /** `instanceof` that survives two copies of the package being loaded. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && (value as Record<symbol, unknown>)[engineErrorMarker] === true;
  }

  /** Normalizes anything thrown into an EngineError (host errno codes mapped here, once). */
  static from(reason: unknown): EngineError {
    if (reason instanceof EngineError) return reason;
    if (reason instanceof Error && (reason.name === "AbortError" || reason.name === "TimeoutError")) {
      return new EngineError(reason.name === "TimeoutError" ? "DEADLINE_EXCEEDED" : "CANCELLED", reason.message, {
        cause: reason,
      });
    }
    const errno = errnoOf(reason);
    if (errno !== undefined) {
      const code = ERRNO_TO_CODE[errno] ?? "IO";
      return new EngineError(code, `host I/O error: ${errno}`, { reason: `HOST_${errno}`, cause: reason });
    }
    const message = reason instanceof Error ? reason.message : String(reason);
    return new EngineError("INTERNAL", message, { cause: reason });
  }
}

/** Host errno → engine code. The one table for it (nbdkit's nbd_errno plays the same role). */
const ERRNO_TO_CODE: Record<string, EngineErrorCode> = {
  ENOSPC: "NO_SPACE",
  EDQUOT: "NO_SPACE",
  EFBIG: "NO_SPACE",
  ENOENT: "NOT_FOUND",
  EEXIST: "ALREADY_EXISTS",
  EROFS: "READ_ONLY",
  EACCES: "PERMISSION",
  EPERM: "PERMISSION",
  EOPNOTSUPP: "UNSUPPORTED",
  ENOTSUP: "UNSUPPORTED",
  ENOSYS: "UNSUPPORTED",
  EAGAIN: "BUSY",
  EBUSY: "BUSY",
  EINVAL: "INVALID_ARGUMENT",
  EIO: "IO",
};

/** Finds a Node-style string errno (`err.code === "ENOSPC"`) anywhere in the cause chain. */
function errnoOf(reason: unknown): string | undefined {
  for (let e: unknown = reason, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^E[A-Z0-9]+$/.test(code)) return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Throws CANCELLED (or DEADLINE_EXCEEDED) if the signal fired. Call at safe points only. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    const r: unknown = signal.reason;
    if (r instanceof EngineError) throw r;
    const timeout = r instanceof Error && r.name === "TimeoutError";
    throw new EngineError(timeout ? "DEADLINE_EXCEEDED" : "CANCELLED", timeout ? "deadline exceeded" : "operation cancelled", {
      cause: r,
    });
  }
}

/** Converts an on-disk 64-bit value to a number, rejecting anything above 2^53 as corruption. */
export function toSafeNumber(value: bigint, what: string): number {
  if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new EngineError("CORRUPT", `${what} out of range: ${value}`, { reason: "VALUE_OUT_OF_RANGE" });
  }
  return Number(value);
}
