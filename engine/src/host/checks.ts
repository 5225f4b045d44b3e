import { EngineError } from "../errors.js";

/** Argument checks and errors shared by both HostFile implementations, so they fail identically. */

/** Offsets and lengths are non-negative integers whose end stays within 2^53 (exact as a JS number). */
export function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new EngineError("INVALID_ARGUMENT", `invalid host file range: offset ${offset}, length ${length}`, {
      reason: "HOST_INVALID_RANGE",
    });
  }
  if (offset + length > Number.MAX_SAFE_INTEGER) {
    throw new EngineError("OUT_OF_RANGE", "host file range ends beyond 2^53", {
      reason: "HOST_RANGE_TOO_LARGE",
    });
  }
}

export function readOnlyError(): EngineError {
  return new EngineError("READ_ONLY", "file is open read-only", { reason: "HOST_READ_ONLY" });
}

export function fsyncFailedError(cause: unknown): EngineError {
  const errno = errnoIn(cause);
  return new EngineError(
    "FSYNC_FAILED",
    "flushing the file to stable storage failed; the file is no longer writable",
    {
      reason: "HOST_FSYNC_FAILED",
      metadata: typeof errno === "string" ? { errno } : {},
      cause,
    },
  );
}

export type FallocateCapability = "allocate" | "punchHole" | "zeroRange";

const UNSUPPORTED_REASONS: Record<FallocateCapability, string> = {
  allocate: "HOST_FALLOCATE_UNSUPPORTED",
  punchHole: "HOST_PUNCH_HOLE_UNSUPPORTED",
  zeroRange: "HOST_ZERO_RANGE_UNSUPPORTED",
};

export function unsupportedError(capability: FallocateCapability, cause?: unknown): EngineError {
  return new EngineError("UNSUPPORTED", `the host file system does not support ${capability}`, {
    reason: UNSUPPORTED_REASONS[capability],
    cause,
  });
}

/** The first Node-style errno code ("EIO") in an error's cause chain. */
function errnoIn(error: unknown): string | undefined {
  for (let e = error, depth = 0; e !== null && typeof e === "object" && depth < 8; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^E[A-Z0-9]+$/.test(code)) return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}
