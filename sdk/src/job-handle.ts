import { Code } from "@connectrpc/connect";
import { snapshotFromWire } from "./convert.js";
import { abortError, VdiskError } from "./errors.js";
import type { JobEvent, Job as WireJob } from "./gen/vdisk/v1/job_pb.js";
import { JobState } from "./gen/vdisk/v1/job_pb.js";
import { backoffDelay, type RetryPolicy, sleep } from "./retry.js";
import type { Job, JobSnapshot } from "./types.js";

/** How a {@link JobHandle} talks to the server. @internal */
export interface JobHandleSource<T> {
  /** Issues the RPC that starts the job. Called again (same request, same request id) if it fails before the job id is known. */
  start(signal: AbortSignal): AsyncIterable<JobEvent>;
  /** Re-attaches to a running job (JobService.WatchJob). */
  watch(jobId: string, signal: AbortSignal): AsyncIterable<JobEvent>;
  /** JobService.CancelJob. */
  cancel(jobId: string): Promise<Job>;
  /** Extracts the typed final value from a SUCCEEDED job. */
  result(job: WireJob): T;
  /** How often and how patiently a broken stream is re-attached. */
  reattach: RetryPolicy;
  /** Aborting it cancels the job (CancelJob), not just the stream. */
  signal?: AbortSignal | undefined;
  /** True once the client was closed: a broken stream is then final, not re-attached. */
  closed(): boolean;
}

// Codes that say the stream broke rather than that the job or request is wrong: worth re-attaching.
const TRANSIENT = new Set<number>([
  Code.Unavailable,
  Code.Unknown,
  Code.Internal,
  Code.Canceled,
  Code.DeadlineExceeded,
  Code.Aborted,
]);
// How long an abort that arrives before the first event waits for the job id, to be able to cancel the job.
const CANCEL_GRACE_MS = 10_000;

function isTerminal(state: JobState): boolean {
  return state === JobState.SUCCEEDED || state === JobState.FAILED || state === JobState.CANCELLED;
}

function jobFailure(job: WireJob): VdiskError {
  if (job.error) return VdiskError.fromStatus(job.error);
  const cancelled = job.state === JobState.CANCELLED;
  return new VdiskError(cancelled ? "job cancelled" : "job failed", {
    status: cancelled ? Code.Canceled : Code.Unknown,
  });
}

function deferred<V>() {
  let resolve!: (value: V) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<V>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // The caller may never look at it (e.g. only iterates progress); a rejection must not crash the process.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * A long-running server job (create, resize, clone, check, allocate, flatten, or one re-attached with watchJob).
 *
 * - `for await (const s of handle)` yields progress snapshots (latest wins; the terminal snapshot always comes last).
 * - `await handle.result` gives the typed final value, or rejects with a {@link VdiskError} built from the job's
 *   error when it FAILED or was CANCELLED.
 * - `handle.cancel()` asks the server to stop the job; aborting the call's `signal` does the same and rejects
 *   `result` with code `"canceled"` at once.
 *
 * The job runs on the server regardless of this handle. If the stream breaks (server restart, dropped
 * connection) the handle re-attaches with WatchJob, so `result` still settles.
 */
export class JobHandle<T> implements AsyncIterable<JobSnapshot> {
  /** The job id, known from the first event. Rejects if the job could not be started. */
  readonly jobId: Promise<string>;
  /** The typed final value. */
  readonly result: Promise<T>;

  private readonly idDeferred = deferred<string>();
  private readonly resultDeferred = deferred<T>();
  private readonly streamAbort = new AbortController();
  private knownId: string | undefined;
  private latest: JobSnapshot | undefined;
  private sequence = 0;
  private finished = false;
  // Set when the handle ended without a terminal snapshot (abort, unrecoverable stream error): iterators throw it.
  private failure: VdiskError | undefined;
  private readonly wakeups = new Set<() => void>();

  /** @internal Use the client's methods to get a handle. */
  constructor(private readonly source: JobHandleSource<T>) {
    this.jobId = this.idDeferred.promise;
    this.result = this.resultDeferred.promise;
    const signal = source.signal;
    if (signal?.aborted) {
      this.abandon(abortError(signal));
      this.idDeferred.reject(abortError(signal));
      return;
    }
    const onAbort = () => this.onUserAbort(abortError(signal as AbortSignal));
    signal?.addEventListener("abort", onAbort, { once: true });
    void this.drive().finally(() => signal?.removeEventListener("abort", onAbort));
  }

  /** Asks the server to cancel the job at its next safe point; resolves with the job's snapshot after the request. */
  async cancel(): Promise<Job> {
    return this.source.cancel(await this.jobId);
  }

  /** Yields progress snapshots until the job ends; throws if the handle was aborted or the job could not be followed. */
  async *[Symbol.asyncIterator](): AsyncIterator<JobSnapshot> {
    let seen = 0;
    for (;;) {
      if (this.latest && this.sequence > seen) {
        seen = this.sequence;
        yield this.latest;
        continue;
      }
      if (this.finished) {
        if (this.failure) throw this.failure;
        return;
      }
      await new Promise<void>((resolve) => this.wakeups.add(resolve));
    }
  }

  private wake(): void {
    for (const wakeup of this.wakeups) wakeup();
    this.wakeups.clear();
  }

  private abandon(error: VdiskError): void {
    if (this.finished) return;
    this.finished = true;
    this.failure = error;
    this.resultDeferred.reject(error);
    this.wake();
  }

  private onUserAbort(error: VdiskError): void {
    if (this.finished) return;
    this.abandon(error);
    const cancelThenClose = (id: string) =>
      this.source
        .cancel(id)
        .catch(() => undefined)
        .finally(() => this.streamAbort.abort(error));
    if (this.knownId !== undefined) {
      void cancelThenClose(this.knownId);
      return;
    }
    // The job may already exist on the server without us knowing its id: keep the stream open briefly so the
    // first event can tell us what to cancel.
    const timer = setTimeout(() => this.streamAbort.abort(error), CANCEL_GRACE_MS);
    timer.unref?.();
    this.jobId.then(
      (id) => {
        clearTimeout(timer);
        void cancelThenClose(id);
      },
      () => clearTimeout(timer),
    );
  }

  /** Records one event; returns true when the driver should stop reading. */
  private publish(job: WireJob): boolean {
    if (this.knownId === undefined && job.id) {
      this.knownId = job.id;
      this.idDeferred.resolve(job.id);
    }
    if (this.finished) return this.knownId !== undefined;
    this.latest = snapshotFromWire(job);
    this.sequence++;
    if (!isTerminal(job.state)) {
      this.wake();
      return false;
    }
    this.finished = true;
    if (job.state === JobState.SUCCEEDED) {
      try {
        this.resultDeferred.resolve(this.source.result(job));
      } catch (err) {
        this.resultDeferred.reject(err instanceof RangeError ? err : VdiskError.from(err));
      }
    } else {
      this.resultDeferred.reject(jobFailure(job));
    }
    this.wake();
    return true;
  }

  private async drive(): Promise<void> {
    const signal = this.streamAbort.signal;
    let failures = 0;
    let open = () => this.source.start(signal);
    try {
      for (;;) {
        let progressed = false;
        try {
          for await (const event of open()) {
            if (!event.job) continue;
            progressed = true;
            if (this.publish(event.job)) return;
          }
          throw new VdiskError("job stream ended before the job finished", { status: Code.Unavailable });
        } catch (err) {
          if (this.finished) return;
          const error = this.source.closed()
            ? new VdiskError("the client was closed", { status: Code.Canceled, cause: err })
            : VdiskError.from(err);
          // Before the id is known only UNAVAILABLE is safe to retry: the same request id makes the server
          // return the job it may already have started instead of starting a second one.
          const resumable =
            this.knownId === undefined ? error.status === Code.Unavailable : TRANSIENT.has(error.status);
          failures = progressed ? 1 : failures + 1;
          if (!resumable || this.source.closed() || failures >= this.source.reattach.maxAttempts) {
            this.abandon(error);
            return;
          }
          await sleep(backoffDelay(this.source.reattach, failures), signal);
          const id = this.knownId;
          if (id !== undefined) open = () => this.source.watch(id, signal);
        }
      }
    } catch (err) {
      this.abandon(VdiskError.from(err));
    } finally {
      if (this.knownId === undefined)
        this.idDeferred.reject(this.failure ?? new VdiskError("job did not start", { status: Code.Unknown }));
    }
  }
}
