import { EngineError } from "../errors.js";

/** A rejected upload: the bytes are not something vdisk will store (gRPC INVALID_ARGUMENT). */
export function rejectUpload(
  reason: string,
  message: string,
  metadata?: Record<string, string>,
): EngineError {
  return new EngineError("INVALID_ARGUMENT", `import: ${message}`, {
    reason,
    ...(metadata ? { metadata } : {}),
  });
}

/**
 * Codes a driver raises about the *content* of a file. For an upload they all mean "malformed upload":
 * the driver's CORRUPT (DATA_LOSS on the wire) is right for a stored volume, but an uploaded file that
 * fails the same check is the uploader's problem, not lost data. The driver's reason is kept.
 */
const CONTENT_CODES = new Set(["CORRUPT", "UNSUPPORTED", "OUT_OF_RANGE"]);

/**
 * Normalizes anything thrown while inspecting into the error the caller reports. Content problems become
 * INVALID_ARGUMENT with the specific reason; quota (NO_SPACE), cancellation and host I/O errors pass
 * through unchanged, since they say nothing about the upload's validity.
 */
export function asUploadError(err: unknown): EngineError {
  const e = EngineError.from(err);
  if (e.code === "INVALID_ARGUMENT" || !CONTENT_CODES.has(e.code)) return e;
  return new EngineError("INVALID_ARGUMENT", e.message, { reason: e.reason, metadata: e.metadata, cause: e });
}
