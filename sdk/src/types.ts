import type {
  JobKindName,
  JobStateName,
  PreallocationName,
  Qcow2CompatName,
  VmdkSubformatName,
  VolumeFormatName,
  VolumeStateName,
} from "./enums.js";
import type { VdiskError } from "./errors.js";

/** qcow2 facts of a volume. */
export interface Qcow2Info {
  /** Version. */
  compat: Qcow2CompatName;
  /** Refcount width in bits. */
  refcountBits: number;
  /** Lazy refcounts enabled. */
  lazyRefcounts: boolean;
  /** Dirty bit set (lazy refcounts not yet consistent). */
  dirty: boolean;
  /** Corrupt bit set: read-only until repaired. */
  corrupt: boolean;
  /** Extended L2 entries (subclusters). */
  extendedL2: boolean;
  /** Internal snapshots in the image (kept, not managed). */
  snapshots: number;
}

/** VMDK facts of a volume. */
export interface VmdkInfo {
  /** Subformat. */
  subformat: VmdkSubformatName;
  /** Content id from the descriptor. */
  cid: number;
}

/** A volume of the pool, with sizes as plain numbers of bytes. */
export interface Volume {
  /** Unique name within the pool. */
  name: string;
  /** Server-assigned id; changes when a name is deleted and reused. */
  uid: string;
  /** On-disk format (`unspecified` only if the server sent a format this SDK does not know). */
  format: VolumeFormatName | "unspecified";
  /** Guest-visible size. */
  capacityBytes: number;
  /** Guest bytes allocated in this volume's own layer. */
  allocationBytes: number;
  /** Host bytes used by the volume's file. */
  physicalBytes: number;
  /** Backing volume name, when this is an overlay. */
  backingVolume: string | undefined;
  /** Volumes below this one in its backing chain (0 = none). */
  chainDepth: number;
  /** qcow2 cluster / vmdk grain size; 0 for raw. */
  clusterSize: number;
  /** Preallocation chosen at creation. */
  preallocation: PreallocationName;
  /** Lifecycle state. */
  state: VolumeStateName;
  /** User labels. */
  labels: Record<string, string>;
  /** Creation time. */
  createTime: Date | undefined;
  /** Last change to the record. */
  updateTime: Date | undefined;
  /** Set for qcow2 volumes. */
  qcow2: Qcow2Info | undefined;
  /** Set for vmdk volumes. */
  vmdk: VmdkInfo | undefined;
  /** Why the volume is in `error` state. */
  errorMessage: string | undefined;
}

/** Consistency check findings, with `qemu-img check` meaning. */
export interface CheckReport {
  /** Inconsistencies that may lose data. */
  corruptions: number;
  /** Allocated but unused clusters. */
  leaks: number;
  /** Corruptions repaired by this check. */
  corruptionsFixed: number;
  /** Leaks repaired by this check. */
  leaksFixed: number;
  /** Errors that kept the check from completing. */
  checkErrors: number;
  /** End of the image's data in its file. */
  imageEndOffset: number;
  /** Allocated clusters of the virtual disk. */
  allocatedClusters: number;
  /** Clusters of the virtual disk. */
  totalClusters: number;
  /** Fragmented clusters. */
  fragmentedClusters: number;
  /** Compressed clusters. */
  compressedClusters: number;
  /** What `qemu-img check` would exit with: 0 clean, 2 corruptions, 3 leaks only. */
  qemuExitCode: number;
  /** Findings, one line each. */
  messages: string[];
}

/** What an AllocateRange or FlattenVolume job did. */
export interface AllocateSummary {
  /** Bytes copied into the top layer from lower layers. */
  copiedBytes: number;
  /** Bytes newly allocated as zeros. */
  zeroedBytes: number;
  /** Bytes already allocated, left alone. */
  unchangedBytes: number;
}

/** Final value of an AllocateRange or FlattenVolume job. */
export interface AllocateResult {
  /** The volume as it is after the job. */
  volume: Volume | undefined;
  /** What was copied and allocated. */
  summary: AllocateSummary;
}

/** Typed outcome of a successful job (which fields are set depends on the job kind). */
export interface JobResult {
  /** Create, resize, clone, import, allocate, flatten: the volume as it is now. */
  volume: Volume | undefined;
  /** Check: the report. */
  check: CheckReport | undefined;
  /** Allocate and flatten: what was done. */
  allocate: AllocateSummary | undefined;
}

/** Progress of a job: a snapshot, later ones replace earlier ones. */
export interface JobProgress {
  /** Bytes processed so far; never decreases within a job. */
  doneBytes: number;
  /** Estimated bytes to process (may change while running). */
  totalBytes: number;
  /** Recent throughput. */
  bytesPerSecond: number;
  /** Estimated seconds left; 0 when unknown or finished. */
  etaSeconds: number;
  /** What the job is doing now, e.g. `"copying"`. */
  phase: string;
}

/** A background job. */
export interface Job {
  /** Server-assigned id. */
  id: string;
  /** What the job does. */
  kind: JobKindName;
  /** The volume it works on. */
  volume: string;
  /** Lifecycle state. */
  state: JobStateName;
  /** Latest progress. */
  progress: JobProgress;
  /** When the job was accepted. */
  createTime: Date | undefined;
  /** When it started running. */
  startTime: Date | undefined;
  /** When it ended. */
  endTime: Date | undefined;
  /** The request id of the call that created it, if any. */
  requestId: string | undefined;
  /** Why it failed or was cancelled. */
  error: VdiskError | undefined;
  /** Its outcome, once succeeded. */
  result: JobResult | undefined;
  /** CancelJob has been called. */
  cancelRequested: boolean;
}

/** One progress snapshot yielded by a {@link JobHandle}. */
export interface JobSnapshot extends JobProgress {
  /** The job's id. */
  jobId: string;
  /** The job's state at the time of the snapshot. */
  state: JobStateName;
  /** CancelJob has been called. */
  cancelRequested: boolean;
}

/**
 * One run of an allocation map, with `qemu-img map --output=json` semantics:
 * depth 0 is the volume itself; `present: false` means no layer (above the base) provides the run.
 */
export interface Extent {
  /** Guest offset. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** Reads come from stored data. */
  data: boolean;
  /** Known to read as zeros. */
  zero: boolean;
  /** Some layer of the chain provides the run. */
  present: boolean;
  /** Layer that resolved the run (0 = this volume). */
  depth: number;
  /** Offset in the host file of layer `depth`, when mapped linearly. */
  hostOffset?: number;
  /** Stored compressed. */
  compressed: boolean;
}

/** Totals over a mapped range. */
export interface AllocationSummary {
  /** Bytes reading from stored data. */
  dataBytes: number;
  /** Bytes known to read as zeros. */
  zeroBytes: number;
  /** Bytes no layer provides. */
  unallocatedBytes: number;
  /** Bytes allocated in the volume's own layer. */
  topAllocatedBytes: number;
}

/** Data read from a volume. */
export interface DataPiece {
  /** Guest offset of the first byte. */
  offset: number;
  /** The bytes. */
  data: Uint8Array;
}

/** A run of a volume that reads as zeros (sent instead of bytes). */
export interface ZeroPiece {
  /** Guest offset. */
  offset: number;
  /** Length of the run. */
  length: number;
  /** Always true. */
  zero: true;
}

/** Asks the server to make everything written so far durable. */
export interface FlushPiece {
  /** Always true. */
  flush: true;
}

/** One item of a sparse volume read. */
export type ReadPiece = DataPiece | ZeroPiece;

/** One item of a volume write: data, a zero run, or a flush marker. */
export type WritePiece = DataPiece | ZeroPiece | FlushPiece;

/** What a WriteVolume call did. */
export interface WriteResult {
  /** Data bytes written. */
  writtenBytes: number;
  /** Bytes made zero by zero runs and zero detection. */
  zeroedBytes: number;
  /** Bytes made durable. */
  flushedBytes: number;
}

/** One page of a listing. */
export interface Page<T> {
  /** The items. */
  items: T[];
  /** Pass as `pageToken` for the next page; `undefined` when there is none. */
  nextPageToken: string | undefined;
}
