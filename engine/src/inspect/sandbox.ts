import { Worker } from "node:worker_threads";
import { EngineError, type EngineErrorCode, throwIfAborted } from "../errors.js";
import type { FormatName } from "../types.js";
import { rejectUpload } from "./errors.js";
import type { Inspection, InspectLimits } from "./inspect-image.js";
import type { SandboxReply, SandboxRequest } from "./sandbox-protocol.js";

export interface SandboxOptions {
  /** Wall-clock limit for the whole inspection, worker start-up included (default 30 s). */
  timeoutMs?: number;
  /** V8 old-generation heap limit of the worker in MiB (default 256). */
  maxMemoryMb?: number;
  signal?: AbortSignal;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_MEMORY_MB = 256;

const ENGINE_CODES: ReadonlySet<string> = new Set<EngineErrorCode>([
  "INVALID_ARGUMENT",
  "OUT_OF_RANGE",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "READ_ONLY",
  "FAILED_PRECONDITION",
  "PERMISSION",
  "UNSUPPORTED",
  "BUSY",
  "NO_SPACE",
  "CORRUPT",
  "IO",
  "FSYNC_FAILED",
  "CANCELLED",
  "DEADLINE_EXCEEDED",
  "INTERNAL",
]);

function limitExceeded(what: string): EngineError {
  return rejectUpload("IMPORT_INSPECTION_LIMIT", `inspection exceeded its ${what} limit`, { limit: what });
}

function revive(reply: SandboxReply): Inspection {
  if (reply.ok) return reply.inspection;
  const { code, reason, message, metadata } = reply.error;
  const known = ENGINE_CODES.has(code) ? (code as EngineErrorCode) : "INTERNAL";
  throw new EngineError(known, message, { reason, metadata });
}

/**
 * Runs inspectImage on `path` in a worker thread with V8 heap limits and a wall-clock timeout
 * (reliability rule 5: parse untrusted images in a sandbox; glance gives qemu-img 2 s CPU / 1 GiB).
 * The worker opens the file read-only itself and nothing else. The verdict, or the typed EngineError
 * (code, reason, message, metadata carried across the boundary), is returned as inspectImage would.
 * A timeout or heap exhaustion means the upload is refused: INVALID_ARGUMENT, IMPORT_INSPECTION_LIMIT.
 *
 * resourceLimits bound the JS heap only; Buffers live outside it. The engine's own bounds (every
 * table size validated before allocation, reads capped) cover those.
 */
export async function inspectInSandbox(
  path: string,
  declared: FormatName,
  limits: InspectLimits,
  opts: SandboxOptions = {},
): Promise<Inspection> {
  throwIfAborted(opts.signal);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const maxMemoryMb = opts.maxMemoryMb ?? DEFAULT_MAX_MEMORY_MB;
  // Same extension as this module: .ts when run from source (tsx, vitest), .js when compiled.
  const extension = import.meta.url.endsWith(".ts") ? ".ts" : ".js";
  const request: SandboxRequest = {
    entry: new URL(`./sandbox-worker${extension}`, import.meta.url).href,
    path,
    declared,
    limits,
  };
  const worker = new Worker(new URL("./sandbox-bootstrap.mjs", import.meta.url), {
    workerData: request,
    resourceLimits: {
      maxOldGenerationSizeMb: maxMemoryMb,
      maxYoungGenerationSizeMb: Math.max(1, Math.min(32, Math.floor(maxMemoryMb / 8))),
      stackSizeMb: 4,
    },
    stdout: false,
    stderr: false,
  });

  return new Promise<Inspection>((resolve, reject) => {
    let settled = false;
    const finish = (outcome: () => Inspection) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      void worker.terminate();
      try {
        resolve(outcome());
      } catch (err) {
        reject(err);
      }
    };
    const timer = setTimeout(
      () =>
        finish(() => {
          throw limitExceeded("time");
        }),
      timeoutMs,
    );
    const onAbort = () =>
      finish(() => {
        throwIfAborted(opts.signal);
        throw new EngineError("CANCELLED", "operation cancelled");
      });
    opts.signal?.addEventListener("abort", onAbort, { once: true });

    worker.on("message", (reply: SandboxReply) => finish(() => revive(reply)));
    worker.on("error", (err: Error & { code?: string }) =>
      finish(() => {
        if (err.code === "ERR_WORKER_OUT_OF_MEMORY") throw limitExceeded("memory");
        throw new EngineError("INTERNAL", `inspection worker failed: ${err.message}`, {
          reason: "IMPORT_INSPECTION_FAILED",
          cause: err,
        });
      }),
    );
    worker.on("exit", (code) =>
      finish(() => {
        throw new EngineError("INTERNAL", `inspection worker exited (code ${code}) without a verdict`, {
          reason: "IMPORT_INSPECTION_FAILED",
        });
      }),
    );
  });
}
