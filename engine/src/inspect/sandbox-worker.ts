import { parentPort, workerData } from "node:worker_threads";
import { EngineError } from "../errors.js";
import type { HostFile } from "../host/host-file.js";
import { openHostFile } from "../host/node-file.js";
import { inspectImage } from "./inspect-image.js";
import type { SandboxReply, SandboxRequest } from "./sandbox-protocol.js";

/**
 * Sandbox worker entry: opens the one file it was given read-only, inspects it, posts one reply. Runs
 * under the worker's resourceLimits; the parent enforces the wall-clock limit by terminating it.
 */
async function run(request: SandboxRequest): Promise<SandboxReply> {
  let file: HostFile | undefined;
  try {
    file = await openHostFile(request.path, { readOnly: true });
    const inspection = await inspectImage(file, request.declared, request.limits);
    return { ok: true, inspection };
  } catch (err) {
    const e = EngineError.from(err);
    return { ok: false, error: { code: e.code, reason: e.reason, message: e.message, metadata: e.metadata } };
  } finally {
    await file?.close().catch(() => undefined);
  }
}

const port = parentPort;
if (port === null) throw new Error("sandbox-worker must run in a worker thread");
port.postMessage(await run(workerData as SandboxRequest));
