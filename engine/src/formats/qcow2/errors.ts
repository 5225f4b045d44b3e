import { EngineError } from "../../errors.js";

/** Inconsistent or hostile image metadata (maps to DATA_LOSS on the wire). */
export function corrupt(reason: string, message: string, metadata?: Record<string, string>): EngineError {
  return new EngineError("CORRUPT", `qcow2: ${message}`, { reason, ...(metadata ? { metadata } : {}) });
}

/** A valid image using something this driver (like QEMU) refuses to handle. */
export function unsupported(reason: string, message: string): EngineError {
  return new EngineError("UNSUPPORTED", `qcow2: ${message}`, { reason });
}

export function invalidArgument(reason: string, message: string): EngineError {
  return new EngineError("INVALID_ARGUMENT", `qcow2: ${message}`, { reason });
}
