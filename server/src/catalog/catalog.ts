import type { EngineErrorCode, FormatName, PreallocMode } from "@vdisk/engine";

/**
 * The server's durable memory: volume records, jobs and request ids. An interface so that a shared
 * database can replace the embedded SQLite one when several servers share a pool. Methods are
 * synchronous because the embedded implementation is; a networked one would wrap calls in a queue.
 */
export type VolumeState = "CREATING" | "READY" | "DELETING" | "ERROR";
export type JobState = "QUEUED" | "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLED";
export type JobKind =
  | "CREATE_VOLUME"
  | "RESIZE_VOLUME"
  | "CLONE_VOLUME"
  | "CHECK_VOLUME"
  | "IMPORT_VOLUME"
  | "ALLOCATE_RANGE"
  | "FLATTEN_VOLUME";

export const TERMINAL_JOB_STATES: readonly JobState[] = ["SUCCEEDED", "FAILED", "CANCELLED"];

export interface VolumeRecord {
  name: string;
  uid: string;
  format: FormatName;
  capacity: number;
  state: VolumeState;
  backingVolume: string | undefined;
  clusterSize: number;
  preallocation: PreallocMode;
  /** Format options as requested (qcow2/vmdk/upfront allocation); kept as given so specs can be compared. */
  options: Record<string, unknown>;
  labels: Record<string, string>;
  /** Milliseconds since the epoch. */
  createTime: number;
  updateTime: number;
  /** Hash of the creation spec: a repeated create with the same hash is the same request. */
  specHash: string;
  requestId: string | undefined;
  errorMessage: string | undefined;
}

export interface JobProgressRecord {
  doneBytes: number;
  totalBytes: number;
  phase: string;
}

/** A job's failure in engine terms; the RPC edge turns it into google.rpc.Status. */
export interface JobErrorRecord {
  code: EngineErrorCode;
  message: string;
  reason: string;
}

export interface JobRecord {
  id: string;
  kind: JobKind;
  volume: string;
  state: JobState;
  progress: JobProgressRecord;
  error: JobErrorRecord | undefined;
  requestId: string | undefined;
  cancelRequested: boolean;
  createTime: number;
  startTime: number | undefined;
  endTime: number | undefined;
}

export interface VolumePatch {
  state?: VolumeState;
  capacity?: number;
  labels?: Record<string, string>;
  errorMessage?: string | null;
}

export interface JobPatch {
  state?: JobState;
  progress?: JobProgressRecord;
  error?: JobErrorRecord | null;
  cancelRequested?: boolean;
  startTime?: number;
  endTime?: number;
}

export interface VolumeQuery {
  /** Return names strictly greater than this (keyset paging). */
  after?: string;
  limit: number;
  /** Every key must be present with exactly this value. */
  labels?: Record<string, string>;
}

export interface JobQuery {
  volume?: string;
  states?: readonly JobState[];
  kind?: JobKind;
  /** Keyset paging over (createTime desc, id desc). */
  before?: { createTime: number; id: string };
  limit: number;
}

export interface Catalog {
  /** Throws ALREADY_EXISTS if the name is taken. */
  insertVolume(volume: VolumeRecord): void;
  getVolume(name: string): VolumeRecord | undefined;
  listVolumes(query: VolumeQuery): VolumeRecord[];
  /** Throws NOT_FOUND if there is no such volume. Returns the updated record. */
  updateVolume(name: string, patch: VolumePatch): VolumeRecord;
  /** Returns false if there was nothing to delete. */
  deleteVolume(name: string): boolean;
  /** Names of volumes whose backing is `name`. */
  dependantsOf(name: string): string[];

  /** Throws ALREADY_EXISTS if the id or the request id is taken. */
  insertJob(job: JobRecord): void;
  getJob(id: string): JobRecord | undefined;
  findJobByRequestId(requestId: string): JobRecord | undefined;
  /** The newest job of `kind` on `volume`. */
  latestJob(volume: string, kind: JobKind): JobRecord | undefined;
  listJobs(query: JobQuery): JobRecord[];
  updateJob(id: string, patch: JobPatch): JobRecord;

  /** Runs `fn` atomically: either all its changes are stored or none. */
  transaction<T>(fn: () => T): T;
  close(): void;
}
