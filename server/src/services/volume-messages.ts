import { type BlockImage, EngineError, type FormatName, mapExtents } from "@vdisk/engine";
import type { JobRecord, VolumeRecord } from "../catalog/catalog.js";
import type { AllocateSummary } from "../gen/vdisk/v1/allocation_types.js";
import type { Job, JobEvent } from "../gen/vdisk/v1/job.js";
import { Qcow2Compat, VmdkSubformat, type Volume } from "../gen/vdisk/v1/volume_types.js";
import {
  formatToWire,
  jobKindToWire,
  jobStateToWire,
  preallocToWire,
  toBigint,
  volumeStateToWire,
} from "../rpc/convert.js";
import { toRpcStatus, toWireError } from "../rpc/errors.js";
import { checkReportOf } from "./check-job.js";
import type { ServiceContext } from "./context.js";

/**
 * The Volume message. Allocation and physical bytes come from the open image (a READY volume only):
 * allocation = what the volume's own layer determines (data + allocated zeros), physical = st_blocks × 512.
 */
export async function volumeMessage(
  ctx: ServiceContext,
  v: VolumeRecord,
  signal?: AbortSignal,
): Promise<Volume> {
  let allocation = 0;
  let physical = 0;
  let chainDepth = 0;
  let vmdk: Volume["vmdk"];
  let qcow2: Volume["qcow2"];
  if (v.state === "READY") {
    const image = await ctx.images.get(v);
    allocation = await ownAllocation(image, v.format, signal);
    physical = await image.physicalBytes();
    for (let b = image.backing; b !== undefined; b = b.backing) chainDepth++;
    const q = image.details().qcow2;
    if (q !== undefined) {
      qcow2 = {
        compat: q.version === 2 ? Qcow2Compat.QCOW2_COMPAT_V2 : Qcow2Compat.QCOW2_COMPAT_V3,
        refcountBits: q.refcountBits,
        lazyRefcounts: q.lazyRefcounts,
        dirty: q.dirty,
        corrupt: q.corrupt,
        extendedL2: q.extendedL2,
        snapshots: q.snapshots,
      };
    }
    const details = image.details().vmdk;
    if (details !== undefined) {
      vmdk = {
        subformat:
          details.subformat === "streamOptimized"
            ? VmdkSubformat.VMDK_SUBFORMAT_STREAM_OPTIMIZED
            : VmdkSubformat.VMDK_SUBFORMAT_MONOLITHIC_SPARSE,
        cid: details.cid,
      };
    }
  }
  return {
    name: v.name,
    uid: v.uid,
    format: formatToWire(v.format),
    capacityBytes: toBigint(v.capacity),
    allocationBytes: toBigint(allocation),
    physicalBytes: toBigint(physical),
    backingVolume: v.backingVolume ?? "",
    chainDepth,
    clusterSize: v.clusterSize,
    preallocation: preallocToWire(v.preallocation),
    state: volumeStateToWire(v.state),
    labels: { ...v.labels },
    createTime: new Date(v.createTime),
    updateTime: new Date(v.updateTime),
    qcow2,
    vmdk,
    errorMessage: v.errorMessage ?? "",
  };
}

export function jobMessage(job: JobRecord): Job {
  const p = job.progress;
  return {
    id: job.id,
    kind: jobKindToWire(job.kind),
    volume: job.volume,
    state: jobStateToWire(job.state),
    progress: {
      doneBytes: toBigint(p.doneBytes),
      totalBytes: toBigint(p.totalBytes),
      bytesPerSecond: toBigint(Math.max(0, Math.round(p.bytesPerSecond))),
      etaSeconds: p.etaSeconds,
      phase: p.phase,
    },
    createTime: job.createTime,
    startTime: job.startTime,
    endTime: job.endTime,
    requestId: job.requestId ?? "",
    error:
      job.error === undefined
        ? undefined
        : toRpcStatus(
            toWireError(
              new EngineError(job.error.code, job.error.message, {
                reason: job.error.reason,
                metadata: job.error.metadata,
              }),
            ),
          ),
    result: undefined,
    cancelRequested: job.cancelRequested,
  };
}

/** A job snapshot as a JobEvent; a succeeded job that made or changed a volume carries it as the result. */
export async function jobEvent(ctx: ServiceContext, job: JobRecord, signal?: AbortSignal): Promise<JobEvent> {
  const message = jobMessage(job);
  const check = job.kind === "CHECK_VOLUME" ? checkReportOf(job.result) : undefined;
  if (job.state === "SUCCEEDED" && check !== undefined) {
    message.result = { result: { $case: "check", check }, allocate: undefined };
  } else if (job.state === "SUCCEEDED") {
    const volume = ctx.catalog.getVolume(job.volume);
    if (volume !== undefined)
      message.result = {
        result: { $case: "volume", volume: await volumeMessage(ctx, volume, signal) },
        allocate: allocateSummaryOf(job.result),
      };
  }
  return { job: message };
}

/**
 * Guest bytes the volume's own layer stores: data, plus zero runs that keep host space (qcow2 allocated
 * zero clusters, which carry a host offset). A raw hole also reads as zero at a linear offset but holds no
 * space, so for raw only data counts — fallocated ranges are reported as data by SEEK_DATA and do count.
 */
async function ownAllocation(
  image: BlockImage,
  format: FormatName,
  signal: AbortSignal | undefined,
): Promise<number> {
  let bytes = 0;
  for await (const e of mapExtents(image, signal === undefined ? {} : { signal })) {
    if (e.depth !== 0 || !e.present) continue;
    if (e.data || (format !== "raw" && e.zero && e.offset !== undefined)) bytes += e.length;
  }
  return bytes;
}

/** The AllocateSummary of an allocate or flatten job. */
function allocateSummaryOf(result: unknown): AllocateSummary | undefined {
  if (typeof result !== "object" || result === null || !("copiedBytes" in result)) return undefined;
  const r = result as { copiedBytes: number; zeroedBytes: number; unchangedBytes: number };
  return {
    copiedBytes: BigInt(r.copiedBytes),
    zeroedBytes: BigInt(r.zeroedBytes),
    unchangedBytes: BigInt(r.unchangedBytes),
  };
}
