import type { FormatName } from "../types.js";
import type { Inspection, InspectLimits } from "./inspect-image.js";

/** What the parent hands the sandbox worker (structured-cloned as workerData). */
export interface SandboxRequest {
  /** Module the bootstrap loads: the worker entry, .ts under tsx/vitest or .js when compiled. */
  entry: string;
  path: string;
  declared: FormatName;
  limits: InspectLimits;
}

/** An EngineError flattened for the worker boundary (class identity does not survive structured clone). */
export interface SerializedEngineError {
  code: string;
  reason: string;
  message: string;
  metadata: Record<string, string>;
}

export type SandboxReply = { ok: true; inspection: Inspection } | { ok: false; error: SerializedEngineError };
