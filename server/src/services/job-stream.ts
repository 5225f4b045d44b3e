import { EngineError } from "@vdisk/engine";
import type { JobRecord, VolumeRecord } from "../catalog/catalog.js";
import type { JobEvent } from "../gen/vdisk/v1/job.js";
import type { JobKind } from "../jobs/job-types.js";
import type { CallContext } from "../rpc/adapt.js";
import { requireVolume, type ServiceContext } from "./context.js";
import { jobEvent } from "./volume-messages.js";

/** The job an earlier call with this request_id started, if any; a reuse for another request is refused. */
export function priorJob(
  ctx: ServiceContext,
  requestId: string | undefined,
  kind: JobKind,
  volume: string,
): JobRecord | undefined {
  if (requestId === undefined) return undefined;
  const previous = ctx.jobs.get(requestId, true);
  if (previous !== undefined && (previous.kind !== kind || previous.volume !== volume)) {
    throw new EngineError("INVALID_ARGUMENT", "request_id was already used for a different request", {
      reason: "REQUEST_ID_REUSED",
      metadata: { job: previous.id },
    });
  }
  return previous;
}

/** Streams a job's snapshots to the caller, cancelling the job if the caller leaves and asked for that. */
export async function* streamJob(
  ctx: ServiceContext,
  jobId: string,
  call: CallContext,
  cancelOnDisconnect: boolean,
): AsyncGenerator<JobEvent> {
  if (cancelOnDisconnect) {
    call.signal.addEventListener("abort", () => {
      const reason = call.signal.reason as EngineError | undefined;
      if (reason?.reason === "CLIENT_CANCELLED" || reason?.reason === "DEADLINE") ctx.jobs.cancel(jobId);
    });
  }
  for await (const snapshot of ctx.jobs.watch(jobId, call.signal))
    yield await jobEvent(ctx, snapshot, call.signal);
}

/** The volumes below `volume`, nearest first (its backing, that one's backing, ...). */
export function backingChain(ctx: ServiceContext, volume: VolumeRecord): VolumeRecord[] {
  const chain: VolumeRecord[] = [];
  let current = volume;
  while (current.backingVolume !== undefined) {
    if (chain.length > 64)
      throw new EngineError("FAILED_PRECONDITION", "backing chain is too deep", { reason: "CHAIN_TOO_DEEP" });
    const next = requireVolume(ctx.catalog, current.backingVolume, "backing_volume");
    chain.push(next);
    current = next;
  }
  return chain;
}

/** Resolves base_volume, which must be somewhere below `volume` in its chain. */
export function requireBaseInChain(ctx: ServiceContext, volume: VolumeRecord, name: string): VolumeRecord {
  const base = backingChain(ctx, volume).find((v) => v.name === name);
  if (base === undefined) {
    throw new EngineError("INVALID_ARGUMENT", `base_volume "${name}" is not in the backing chain of "${volume.name}"`, {
      reason: "BASE_NOT_IN_CHAIN",
      metadata: { field: "base_volume", volume: volume.name },
    });
  }
  return base;
}
