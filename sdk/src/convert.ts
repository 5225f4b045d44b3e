import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  jobKinds,
  jobStates,
  preallocations,
  qcow2Compats,
  vmdkSubformats,
  volumeFormats,
  volumeStates,
} from "./enums.js";
import { VdiskError } from "./errors.js";
import type * as alloc from "./gen/vdisk/v1/allocation_types_pb.js";
import type * as jobs from "./gen/vdisk/v1/job_pb.js";
import type * as vol from "./gen/vdisk/v1/volume_types_pb.js";
import { fromUint64 } from "./sizes.js";
import type {
  AllocateSummary,
  AllocationSummary,
  CheckReport,
  Extent,
  Job,
  JobProgress,
  JobResult,
  JobSnapshot,
  Volume,
} from "./types.js";

// Wire messages → the SDK's plain values. Every uint64 goes through fromUint64, so nothing is silently rounded.

function date(ts: Timestamp | undefined): Date | undefined {
  return ts ? timestampDate(ts) : undefined;
}

/** @internal */
export function volumeFromWire(v: vol.Volume): Volume {
  return {
    name: v.name,
    uid: v.uid,
    format: volumeFormats.decode(v.format, "unspecified"),
    capacityBytes: fromUint64(v.capacityBytes, "capacity_bytes"),
    allocationBytes: fromUint64(v.allocationBytes, "allocation_bytes"),
    physicalBytes: fromUint64(v.physicalBytes, "physical_bytes"),
    backingVolume: v.backingVolume || undefined,
    chainDepth: v.chainDepth,
    clusterSize: v.clusterSize,
    preallocation: preallocations.decode(v.preallocation, "off"),
    state: volumeStates.decode(v.state, "unspecified"),
    labels: { ...v.labels },
    createTime: date(v.createTime),
    updateTime: date(v.updateTime),
    qcow2: v.qcow2
      ? {
          compat: qcow2Compats.decode(v.qcow2.compat, "v3"),
          refcountBits: v.qcow2.refcountBits,
          lazyRefcounts: v.qcow2.lazyRefcounts,
          dirty: v.qcow2.dirty,
          corrupt: v.qcow2.corrupt,
          extendedL2: v.qcow2.extendedL2,
          snapshots: v.qcow2.snapshots,
        }
      : undefined,
    vmdk: v.vmdk
      ? { subformat: vmdkSubformats.decode(v.vmdk.subformat, "monolithicSparse"), cid: v.vmdk.cid }
      : undefined,
    errorMessage: v.errorMessage || undefined,
  };
}

/** @internal */
export function checkReportFromWire(r: vol.CheckReport): CheckReport {
  return {
    corruptions: fromUint64(r.corruptions, "corruptions"),
    leaks: fromUint64(r.leaks, "leaks"),
    corruptionsFixed: fromUint64(r.corruptionsFixed, "corruptions_fixed"),
    leaksFixed: fromUint64(r.leaksFixed, "leaks_fixed"),
    checkErrors: fromUint64(r.checkErrors, "check_errors"),
    imageEndOffset: fromUint64(r.imageEndOffset, "image_end_offset"),
    allocatedClusters: fromUint64(r.allocatedClusters, "allocated_clusters"),
    totalClusters: fromUint64(r.totalClusters, "total_clusters"),
    fragmentedClusters: fromUint64(r.fragmentedClusters, "fragmented_clusters"),
    compressedClusters: fromUint64(r.compressedClusters, "compressed_clusters"),
    qemuExitCode: r.qemuExitCode,
    messages: [...r.messages],
  };
}

/** @internal */
export function allocateSummaryFromWire(s: alloc.AllocateSummary | undefined): AllocateSummary {
  return {
    copiedBytes: s ? fromUint64(s.copiedBytes, "copied_bytes") : 0,
    zeroedBytes: s ? fromUint64(s.zeroedBytes, "zeroed_bytes") : 0,
    unchangedBytes: s ? fromUint64(s.unchangedBytes, "unchanged_bytes") : 0,
  };
}

/** @internal */
export function jobResultFromWire(r: jobs.JobResult | undefined): JobResult {
  return {
    volume: r?.result.case === "volume" ? volumeFromWire(r.result.value) : undefined,
    check: r?.result.case === "check" ? checkReportFromWire(r.result.value) : undefined,
    allocate: r?.allocate ? allocateSummaryFromWire(r.allocate) : undefined,
  };
}

/** @internal */
export function progressFromWire(p: jobs.JobProgress | undefined): JobProgress {
  return {
    doneBytes: p ? fromUint64(p.doneBytes, "done_bytes") : 0,
    totalBytes: p ? fromUint64(p.totalBytes, "total_bytes") : 0,
    bytesPerSecond: p ? fromUint64(p.bytesPerSecond, "bytes_per_second") : 0,
    etaSeconds: p?.etaSeconds ?? 0,
    phase: p?.phase ?? "",
  };
}

/** @internal */
export function jobFromWire(j: jobs.Job): Job {
  return {
    id: j.id,
    kind: jobKinds.decode(j.kind, "unspecified"),
    volume: j.volume,
    state: jobStates.decode(j.state, "unspecified"),
    progress: progressFromWire(j.progress),
    createTime: date(j.createTime),
    startTime: date(j.startTime),
    endTime: date(j.endTime),
    requestId: j.requestId || undefined,
    error: j.error ? VdiskError.fromStatus(j.error) : undefined,
    result: j.result ? jobResultFromWire(j.result) : undefined,
    cancelRequested: j.cancelRequested,
  };
}

/** @internal */
export function snapshotFromWire(j: jobs.Job): JobSnapshot {
  return {
    jobId: j.id,
    state: jobStates.decode(j.state, "unspecified"),
    cancelRequested: j.cancelRequested,
    ...progressFromWire(j.progress),
  };
}

/** @internal */
export function extentFromWire(e: alloc.Extent): Extent {
  const extent: Extent = {
    offset: fromUint64(e.offset, "offset"),
    length: fromUint64(e.length, "length"),
    data: e.data,
    zero: e.zero,
    present: e.present,
    depth: e.depth,
    compressed: e.compressed,
  };
  if (e.hostOffset !== undefined) extent.hostOffset = fromUint64(e.hostOffset, "host_offset");
  return extent;
}

/** @internal */
export function allocationSummaryFromWire(s: alloc.AllocationSummary): AllocationSummary {
  return {
    dataBytes: fromUint64(s.dataBytes, "data_bytes"),
    zeroBytes: fromUint64(s.zeroBytes, "zero_bytes"),
    unallocatedBytes: fromUint64(s.unallocatedBytes, "unallocated_bytes"),
    topAllocatedBytes: fromUint64(s.topAllocatedBytes, "top_allocated_bytes"),
  };
}
