import { AllocateMode } from "./gen/vdisk/v1/allocation_pb.js";
import { Preallocation, VolumeFormat, ZeroDetection } from "./gen/vdisk/v1/common_pb.js";
import { JobKind, JobState } from "./gen/vdisk/v1/job_pb.js";
import { CloneMode, RepairMode } from "./gen/vdisk/v1/volume_pb.js";
import { Qcow2Compat, VmdkSubformat, VolumeState } from "./gen/vdisk/v1/volume_types_pb.js";

/** On-disk format of a volume. */
export type VolumeFormatName = "raw" | "qcow2" | "vmdk";
/** Up-front allocation: thin (`off`), qcow2 metadata only, fallocate'd, or fully written zeros. */
export type PreallocationName = "off" | "metadata" | "falloc" | "full";
/** What the server does with all-zero data written to a volume (QEMU's detect-zeroes). */
export type ZeroDetectionName = "off" | "on" | "unmap";
/** Lifecycle of a volume. `unspecified` only appears if the server sends a value this SDK does not know. */
export type VolumeStateName = "creating" | "ready" | "deleting" | "error" | "unspecified";
/** Lifecycle of a job. `unspecified` only appears if the server sends a value this SDK does not know. */
export type JobStateName = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "unspecified";
/** The operation a job performs. */
export type JobKindName =
  | "create"
  | "resize"
  | "clone"
  | "check"
  | "import"
  | "allocate"
  | "flatten"
  | "unspecified";
/** LINKED: a qcow2 overlay backed by the source. FULL: an independent sparse-aware copy in any format. */
export type CloneModeName = "linked" | "full";
/** How much CheckVolume repairs. */
export type RepairModeName = "none" | "leaks" | "all";
/** Mode of AllocateRange: copy-up keeps holes, full allocates everything, metadata allocates qcow2 zero clusters. */
export type AllocateModeName = "copy-up" | "full" | "metadata";
/** qcow2 version: v2 is compat=0.10, v3 is compat=1.1. */
export type Qcow2CompatName = "v2" | "v3";
/** VMDK subformat. */
export type VmdkSubformatName = "monolithicSparse" | "streamOptimized";

// One table per enum, so both directions come from the same source and cannot drift apart.
function enumTable<N extends string, E extends number>(what: string, pairs: readonly (readonly [N, E])[]) {
  const toWire = new Map<string, E>(pairs);
  const fromWire = new Map<number, N>(pairs.map(([name, value]) => [value, name]));
  return {
    encode(name: N): E {
      const value = toWire.get(name);
      if (value === undefined)
        throw new TypeError(
          `unknown ${what} "${String(name)}"; expected one of ${[...toWire.keys()].join(", ")}`,
        );
      return value;
    },
    decode<F extends N>(value: number, fallback: F): N {
      return fromWire.get(value) ?? fallback;
    },
  };
}

/** @internal */
export const volumeFormats = enumTable<VolumeFormatName | "unspecified", VolumeFormat>("format", [
  ["raw", VolumeFormat.RAW],
  ["qcow2", VolumeFormat.QCOW2],
  ["vmdk", VolumeFormat.VMDK],
  ["unspecified", VolumeFormat.UNSPECIFIED],
]);
/** @internal */
export const preallocations = enumTable<PreallocationName, Preallocation>("preallocation", [
  ["off", Preallocation.OFF],
  ["metadata", Preallocation.METADATA],
  ["falloc", Preallocation.FALLOC],
  ["full", Preallocation.FULL],
]);
/** @internal */
export const zeroDetections = enumTable<ZeroDetectionName, ZeroDetection>("zero detection", [
  ["off", ZeroDetection.OFF],
  ["on", ZeroDetection.ON],
  ["unmap", ZeroDetection.UNMAP],
]);
/** @internal */
export const volumeStates = enumTable<VolumeStateName, VolumeState>("volume state", [
  ["creating", VolumeState.CREATING],
  ["ready", VolumeState.READY],
  ["deleting", VolumeState.DELETING],
  ["error", VolumeState.ERROR],
  ["unspecified", VolumeState.UNSPECIFIED],
]);
/** @internal */
export const jobStates = enumTable<JobStateName, JobState>("job state", [
  ["queued", JobState.QUEUED],
  ["running", JobState.RUNNING],
  ["succeeded", JobState.SUCCEEDED],
  ["failed", JobState.FAILED],
  ["cancelled", JobState.CANCELLED],
  ["unspecified", JobState.UNSPECIFIED],
]);
/** @internal */
export const jobKinds = enumTable<JobKindName, JobKind>("job kind", [
  ["create", JobKind.CREATE_VOLUME],
  ["resize", JobKind.RESIZE_VOLUME],
  ["clone", JobKind.CLONE_VOLUME],
  ["check", JobKind.CHECK_VOLUME],
  ["import", JobKind.IMPORT_VOLUME],
  ["allocate", JobKind.ALLOCATE_RANGE],
  ["flatten", JobKind.FLATTEN_VOLUME],
  ["unspecified", JobKind.UNSPECIFIED],
]);
/** @internal */
export const cloneModes = enumTable<CloneModeName, CloneMode>("clone mode", [
  ["linked", CloneMode.LINKED],
  ["full", CloneMode.FULL],
]);
/** @internal */
export const repairModes = enumTable<RepairModeName, RepairMode>("repair mode", [
  ["none", RepairMode.NONE],
  ["leaks", RepairMode.LEAKS],
  ["all", RepairMode.ALL],
]);
/** @internal */
export const allocateModes = enumTable<AllocateModeName, AllocateMode>("allocate mode", [
  ["copy-up", AllocateMode.COPY_UP],
  ["full", AllocateMode.FULL],
  ["metadata", AllocateMode.METADATA],
]);
/** @internal */
export const qcow2Compats = enumTable<Qcow2CompatName, Qcow2Compat>("qcow2 compat", [
  ["v2", Qcow2Compat.V2],
  ["v3", Qcow2Compat.V3],
]);
/** @internal */
export const vmdkSubformats = enumTable<VmdkSubformatName, VmdkSubformat>("vmdk subformat", [
  ["monolithicSparse", VmdkSubformat.MONOLITHIC_SPARSE],
  ["streamOptimized", VmdkSubformat.STREAM_OPTIMIZED],
]);
