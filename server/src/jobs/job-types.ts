import type { EngineErrorCode } from "@vdisk/engine";

export type JobState = "QUEUED" | "RUNNING" | "SUCCEEDED" | "FAILED" | "CANCELLED";

export type JobKind =
  | "CREATE_VOLUME"
  | "RESIZE_VOLUME"
  | "CLONE_VOLUME"
  | "CHECK_VOLUME"
  | "IMPORT_VOLUME"
  | "ALLOCATE_RANGE"
  | "FLATTEN_VOLUME";

export interface JobProgress {
  doneBytes: number;
  totalBytes: number;
  bytesPerSecond: number;
  etaSeconds: number;
  phase: string;
}

export interface JobError {
  code: EngineErrorCode;
  message: string;
  reason: string;
  metadata: Record<string, string>;
}

/** A job as stored and streamed: immutable snapshots, a new object for every change. */
export interface JobSnapshot<R = unknown> {
  id: string;
  kind: JobKind;
  volume: string;
  state: JobState;
  progress: JobProgress;
  createTime: Date;
  startTime?: Date;
  endTime?: Date;
  requestId?: string;
  cancelRequested: boolean;
  error?: JobError;
  result?: R;
}

export function isTerminal(state: JobState): boolean {
  return state === "SUCCEEDED" || state === "FAILED" || state === "CANCELLED";
}

/** Where job snapshots persist (the catalog). Writes are rate-limited by the runner. */
export interface JobStore {
  saveJob(job: JobSnapshot): void;
  getJob(id: string): JobSnapshot | undefined;
  findJobByRequestId(requestId: string): JobSnapshot | undefined;
  /**
   * Runs `fn` atomically (all its writes are stored, or none). A store without transactions runs `fn`
   * as is; the runner then stores a job's row after the writes that go with it.
   */
  transaction?<T>(fn: () => T): T;
}
