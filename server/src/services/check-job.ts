import { type CheckResult, EngineError, type RepairMode } from "@vdisk/engine";
import type { CheckReport } from "../gen/vdisk/v1/volume_types.js";
import { RepairMode as WireRepairMode } from "../gen/vdisk/v1/volume.js";
import type { JobEvent } from "../gen/vdisk/v1/job.js";
import type { CheckVolumeRequest } from "../gen/vdisk/v1/volume.js";
import type { CallContext } from "../rpc/adapt.js";
import { markVolumeIfBroken, requireReadyVolume, type ServiceContext } from "./context.js";
import { priorJob, streamJob } from "./job-stream.js";

/**
 * CheckVolume as a job. The volume is held exclusive: a repair rewrites metadata, and even a read-only
 * check must not see a half-written refcount update from a concurrent writer.
 */
export async function* checkVolume(
  ctx: ServiceContext,
  req: CheckVolumeRequest,
  call: CallContext,
): AsyncGenerator<JobEvent> {
  const requestId = req.requestId === "" ? undefined : req.requestId;
  let job = priorJob(ctx, requestId, "CHECK_VOLUME", req.name);
  if (job === undefined) {
    const volume = requireReadyVolume(ctx.catalog, req.name);
    const repair = repairFromWire(req.repair);
    job = ctx.jobs.submit({
      kind: "CHECK_VOLUME",
      volume: volume.name,
      ...(requestId === undefined ? {} : { requestId }),
      locks: [{ volume: volume.name, mode: "exclusive" }],
      totalBytes: 0,
      run: async (job) => {
        job.phase(repair === "none" ? "checking" : "repairing");
        const image = await ctx.images.get(volume);
        try {
          const result = await image.check({ repair, signal: job.signal });
          if (repair !== "none") await image.flush({ signal: job.signal });
          ctx.log.info({ volume: volume.name, repair, ...summary(result) }, "checked volume");
          return result;
        } catch (err) {
          await markVolumeIfBroken(ctx, volume, err);
          throw err;
        }
      },
    }).job;
  }
  yield* streamJob(ctx, job.id, call, req.cancelOnDisconnect);
}

function summary(r: CheckResult): Record<string, number> {
  return { corruptions: r.corruptions, leaks: r.leaks, fixed: r.corruptionsFixed + r.leaksFixed };
}

function repairFromWire(mode: WireRepairMode): RepairMode {
  switch (mode) {
    case WireRepairMode.REPAIR_MODE_UNSPECIFIED:
    case WireRepairMode.REPAIR_MODE_NONE:
      return "none";
    case WireRepairMode.REPAIR_MODE_LEAKS:
      return "leaks";
    case WireRepairMode.REPAIR_MODE_ALL:
      return "all";
    default:
      throw new EngineError("INVALID_ARGUMENT", "repair must be NONE, LEAKS or ALL", {
        reason: "INVALID_REPAIR_MODE",
        metadata: { field: "repair" },
      });
  }
}

/**
 * qemu-img check's exit status for what remains after any repair: 1 when the check itself failed,
 * 2 for corruptions, 3 for leaks only, 0 when clean.
 */
export function qemuExitCode(r: CheckResult): number {
  if (r.checkErrors > 0) return 1;
  if (r.corruptions - r.corruptionsFixed > 0) return 2;
  if (r.leaks - r.leaksFixed > 0) return 3;
  return 0;
}

/** A CheckResult (live, or as the catalog stored it) as the wire's CheckReport; undefined if it is not one. */
export function checkReportOf(result: unknown): CheckReport | undefined {
  if (typeof result !== "object" || result === null || !("corruptions" in result) || !("leaks" in result))
    return undefined;
  const r = result as CheckResult;
  const n = (v: number | undefined) => BigInt(v ?? 0);
  return {
    corruptions: n(r.corruptions),
    leaks: n(r.leaks),
    corruptionsFixed: n(r.corruptionsFixed),
    leaksFixed: n(r.leaksFixed),
    checkErrors: n(r.checkErrors),
    imageEndOffset: n(r.imageEndOffset),
    allocatedClusters: n(r.allocatedClusters),
    totalClusters: n(r.totalClusters),
    fragmentedClusters: n(r.fragmentedClusters),
    compressedClusters: n(r.compressedClusters),
    qemuExitCode: qemuExitCode(r),
    messages: [...r.messages],
  };
}
