import type { FormatName, PreallocMode } from "@vdisk/engine";
import type { JobKind, JobSnapshot, JobState, JobStore } from "../jobs/job-types.js";

export type { JobKind, JobState };

/**
 * The server's durable memory: volume records, jobs and request ids. An interface so that a shared
 * database can replace the embedded SQLite one when several servers share a pool. Methods are
 * synchronous because the embedded implementation is; a networked one would wrap calls in a queue.
 */
export type VolumeState = "CREATING" | "READY" | "DELETING" | "ERROR";

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

/**
 * A job as the catalog stores it: the runner's snapshot. Its result is kept as plain data (JSON), so a
 * stored result is a record of numbers and strings, not an instance of any class.
 */
export type JobRecord = JobSnapshot;

export interface VolumePatch {
  state?: VolumeState;
  capacity?: number;
  labels?: Record<string, string>;
  errorMessage?: string | null;
  /** A new direct backing volume; null when the volume no longer has one (after a flatten). */
  backingVolume?: string | null;
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

export interface Catalog extends JobStore {
  /** Throws ALREADY_EXISTS if the name is taken. */
  insertVolume(volume: VolumeRecord): void;
  getVolume(name: string): VolumeRecord | undefined;
  listVolumes(query: VolumeQuery): VolumeRecord[];
  /** Throws NOT_FOUND if there is no such volume. Returns the updated record. */
  updateVolume(name: string, patch: VolumePatch): VolumeRecord;
  /**
   * Returns false if there was nothing to delete. With `requestId` (DeleteVolume's request_id), the deletion
   * is remembered with the record's removal, in one transaction (see completedDelete).
   */
  deleteVolume(name: string, requestId?: string): boolean;
  /** The volume a DeleteVolume with this request_id deleted, if one did recently (a day). */
  completedDelete(requestId: string): { volume: string } | undefined;
  /** Names of volumes whose backing is `name`. */
  dependantsOf(name: string): string[];

  /** Inserts or replaces the job's snapshot (JobStore). A request id already used by another job is ALREADY_EXISTS. */
  saveJob(job: JobRecord): void;
  getJob(id: string): JobRecord | undefined;
  findJobByRequestId(requestId: string): JobRecord | undefined;
  /** The newest job of `kind` on `volume`. */
  latestJob(volume: string, kind: JobKind): JobRecord | undefined;
  listJobs(query: JobQuery): JobRecord[];

  /** Runs `fn` atomically: either all its changes are stored or none. */
  transaction<T>(fn: () => T): T;
  close(): void;
}
