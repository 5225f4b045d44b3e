import {
  EngineError,
  type ZeroDetection as EngineZeroDetection,
  type FormatName,
  type PreallocMode,
} from "@vdisk/engine";
import type {
  JobKind as CatalogJobKind,
  JobState as CatalogJobState,
  VolumeState as CatalogVolumeState,
} from "../catalog/catalog.js";
import { Preallocation, VolumeFormat, ZeroDetection } from "../gen/vdisk/v1/common.js";
import { JobKind, JobState } from "../gen/vdisk/v1/job.js";
import { VolumeState } from "../gen/vdisk/v1/volume_types.js";

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * The one checked conversion from a wire uint64 to an engine number. Offsets and sizes above 2^53 can't
 * be represented exactly in the engine, and no volume can be that big, so they are OUT_OF_RANGE.
 */
export function toNumber(value: bigint, field: string): number {
  if (value < 0n || value > MAX_SAFE) {
    throw new EngineError("OUT_OF_RANGE", `${field} is out of range: ${value} (at most 2^53 - 1)`, {
      reason: "VALUE_TOO_LARGE",
      metadata: { field },
    });
  }
  return Number(value);
}

export function toBigint(value: number): bigint {
  return BigInt(value);
}

export function formatFromWire(format: VolumeFormat): FormatName {
  switch (format) {
    case VolumeFormat.VOLUME_FORMAT_RAW:
      return "raw";
    case VolumeFormat.VOLUME_FORMAT_QCOW2:
      return "qcow2";
    case VolumeFormat.VOLUME_FORMAT_VMDK:
      return "vmdk";
    default:
      throw new EngineError("INVALID_ARGUMENT", "format is required (RAW, QCOW2 or VMDK)", {
        reason: "INVALID_FORMAT",
        metadata: { field: "format" },
      });
  }
}

export function formatToWire(format: FormatName): VolumeFormat {
  return {
    raw: VolumeFormat.VOLUME_FORMAT_RAW,
    qcow2: VolumeFormat.VOLUME_FORMAT_QCOW2,
    vmdk: VolumeFormat.VOLUME_FORMAT_VMDK,
  }[format];
}

export function preallocFromWire(mode: Preallocation): PreallocMode {
  switch (mode) {
    case Preallocation.PREALLOCATION_UNSPECIFIED:
    case Preallocation.PREALLOCATION_OFF:
      return "off";
    case Preallocation.PREALLOCATION_METADATA:
      return "metadata";
    case Preallocation.PREALLOCATION_FALLOC:
      return "falloc";
    case Preallocation.PREALLOCATION_FULL:
      return "full";
    default:
      throw new EngineError("INVALID_ARGUMENT", `unknown preallocation mode ${String(mode)}`, {
        reason: "INVALID_PREALLOCATION",
        metadata: { field: "preallocation" },
      });
  }
}

export function preallocToWire(mode: PreallocMode): Preallocation {
  return {
    off: Preallocation.PREALLOCATION_OFF,
    metadata: Preallocation.PREALLOCATION_METADATA,
    falloc: Preallocation.PREALLOCATION_FALLOC,
    full: Preallocation.PREALLOCATION_FULL,
  }[mode];
}

export function zeroDetectionFromWire(mode: ZeroDetection): EngineZeroDetection {
  switch (mode) {
    case ZeroDetection.ZERO_DETECTION_UNSPECIFIED:
    case ZeroDetection.ZERO_DETECTION_OFF:
      return "off";
    case ZeroDetection.ZERO_DETECTION_ON:
      return "on";
    case ZeroDetection.ZERO_DETECTION_UNMAP:
      return "unmap";
    default:
      throw new EngineError("INVALID_ARGUMENT", `unknown zero detection mode ${String(mode)}`, {
        reason: "INVALID_ZERO_DETECTION",
        metadata: { field: "zero_detection" },
      });
  }
}

export function volumeStateToWire(state: CatalogVolumeState): VolumeState {
  return {
    CREATING: VolumeState.VOLUME_STATE_CREATING,
    READY: VolumeState.VOLUME_STATE_READY,
    DELETING: VolumeState.VOLUME_STATE_DELETING,
    ERROR: VolumeState.VOLUME_STATE_ERROR,
  }[state];
}

export function jobStateToWire(state: CatalogJobState): JobState {
  return {
    QUEUED: JobState.JOB_STATE_QUEUED,
    RUNNING: JobState.JOB_STATE_RUNNING,
    SUCCEEDED: JobState.JOB_STATE_SUCCEEDED,
    FAILED: JobState.JOB_STATE_FAILED,
    CANCELLED: JobState.JOB_STATE_CANCELLED,
  }[state];
}

export function jobStateFromWire(state: JobState): CatalogJobState | undefined {
  switch (state) {
    case JobState.JOB_STATE_QUEUED:
      return "QUEUED";
    case JobState.JOB_STATE_RUNNING:
      return "RUNNING";
    case JobState.JOB_STATE_SUCCEEDED:
      return "SUCCEEDED";
    case JobState.JOB_STATE_FAILED:
      return "FAILED";
    case JobState.JOB_STATE_CANCELLED:
      return "CANCELLED";
    default:
      return undefined;
  }
}

const JOB_KINDS: Record<CatalogJobKind, JobKind> = {
  CREATE_VOLUME: JobKind.JOB_KIND_CREATE_VOLUME,
  RESIZE_VOLUME: JobKind.JOB_KIND_RESIZE_VOLUME,
  CLONE_VOLUME: JobKind.JOB_KIND_CLONE_VOLUME,
  CHECK_VOLUME: JobKind.JOB_KIND_CHECK_VOLUME,
  IMPORT_VOLUME: JobKind.JOB_KIND_IMPORT_VOLUME,
  ALLOCATE_RANGE: JobKind.JOB_KIND_ALLOCATE_RANGE,
  FLATTEN_VOLUME: JobKind.JOB_KIND_FLATTEN_VOLUME,
};

export function jobKindToWire(kind: CatalogJobKind): JobKind {
  return JOB_KINDS[kind];
}

export function jobKindFromWire(kind: JobKind): CatalogJobKind | undefined {
  return (Object.keys(JOB_KINDS) as CatalogJobKind[]).find((k) => JOB_KINDS[k] === kind);
}
