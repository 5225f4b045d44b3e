import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { EngineError } from "@vdisk/engine";
import type { Catalog, JobErrorRecord, JobKind, JobRecord } from "../catalog/catalog.js";
import { TERMINAL_JOB_STATES } from "../catalog/catalog.js";
import type { Logger } from "../log.js";
import { toWireError } from "../rpc/errors.js";

export interface JobContext {
  /** Aborts on CancelJob, on cancel-on-disconnect, and on server shutdown. */
  readonly signal: AbortSignal;
  /** Reports progress; cheap to call often (snapshots are coalesced). `done` never goes backwards. */
  progress(done: number, total: number, phase?: string): void;
}

export type JobWork = (ctx: JobContext) => Promise<void>;

export interface JobSpec {
  kind: JobKind;
  volume: string;
  requestId: string | undefined;
  totalBytes: number;
}

/** Snapshot streams are coalesced to at most this many per second (latest wins). */
const EVENTS_PER_SECOND = 10;
/** Progress is persisted at most this often; the in-memory snapshot is always current. */
const PERSIST_INTERVAL_MS = 1000;

interface LiveJob {
  record: JobRecord;
  controller: AbortController;
  version: number;
  changed: Promise<void>;
  notify: () => void;
  lastPersist: number;
  done: Promise<void>;
}

/**
 * Runs background jobs: at most `maxJobs` at a time (others wait QUEUED), each with its own
 * AbortController owned by the runner (not by any RPC), progress kept as a latest-wins snapshot, and every
 * state change recorded in the catalog so reconcile can fail what a crash interrupted.
 */
export class JobRunner {
  private readonly live = new Map<string, LiveJob>();
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private closed = false;

  constructor(
    private readonly catalog: Catalog,
    private readonly log: Logger,
    private readonly maxJobs: number,
  ) {}

  /**
   * Records a new QUEUED job — together with `alsoRecord` (e.g. the volume it creates) in one catalog
   * transaction — and starts it. Returns the job's first snapshot.
   */
  start(
    spec: JobSpec,
    work: JobWork,
    cleanup: (job: JobRecord, error: EngineError) => Promise<void>,
    alsoRecord?: () => void,
  ): JobRecord {
    if (this.closed)
      throw new EngineError("FAILED_PRECONDITION", "the server is shutting down", {
        reason: "SERVER_SHUTDOWN",
      });
    const record: JobRecord = {
      id: `job-${randomUUID()}`,
      kind: spec.kind,
      volume: spec.volume,
      state: "QUEUED",
      progress: { doneBytes: 0, totalBytes: spec.totalBytes, phase: "queued" },
      error: undefined,
      requestId: spec.requestId,
      cancelRequested: false,
      createTime: Date.now(),
      startTime: undefined,
      endTime: undefined,
    };
    this.catalog.transaction(() => {
      alsoRecord?.();
      this.catalog.insertJob(record);
    });
    const job = this.track(record);
    job.done = this.execute(job, work, cleanup);
    return { ...record };
  }

  /** The latest snapshot: live if the job runs in this process, else from the catalog. */
  get(id: string): JobRecord | undefined {
    const live = this.live.get(id);
    return live !== undefined
      ? { ...live.record, progress: { ...live.record.progress } }
      : this.catalog.getJob(id);
  }

  isActive(volume: string): boolean {
    for (const job of this.live.values()) if (job.record.volume === volume) return true;
    return false;
  }

  /** Requests cancellation; the job stops at its next safe point. Unknown or finished jobs are left as they are. */
  cancel(id: string): JobRecord | undefined {
    const live = this.live.get(id);
    if (live === undefined) return this.catalog.getJob(id);
    if (!live.record.cancelRequested) {
      live.record.cancelRequested = true;
      this.catalog.updateJob(id, { cancelRequested: true });
      live.controller.abort(
        new EngineError("CANCELLED", "the job was cancelled", { reason: "JOB_CANCELLED" }),
      );
      this.bump(live);
    }
    return this.get(id);
  }

  /**
   * Streams snapshots of a job until it is terminal: the current one first, then coalesced updates (at
   * most EVENTS_PER_SECOND; intermediate ones are skipped, never queued). Ends early if `signal` fires.
   */
  async *watch(id: string, signal: AbortSignal): AsyncGenerator<JobRecord> {
    let seen = -1;
    const aborted = abortPromise(signal);
    for (;;) {
      const live = this.live.get(id);
      if (live === undefined) {
        const stored = this.catalog.getJob(id);
        if (stored !== undefined) yield stored;
        return;
      }
      if (live.version !== seen) {
        seen = live.version;
        const snapshot = this.get(id) as JobRecord;
        yield snapshot;
        if (TERMINAL_JOB_STATES.includes(snapshot.state)) return;
      }
      if (signal.aborted) return;
      await Promise.race([live.changed, aborted]);
      if (signal.aborted) return;
      if (!TERMINAL_JOB_STATES.includes(live.record.state))
        await sleep(1000 / EVENTS_PER_SECOND, undefined, { signal }).catch(() => {});
    }
  }

  /** Stops accepting jobs, aborts running ones, and waits (bounded) for them to clean up. */
  async shutdown(timeoutMs: number): Promise<void> {
    this.closed = true;
    for (const job of this.live.values()) {
      job.controller.abort(
        new EngineError("BUSY", "the server shut down during the job", { reason: "SERVER_SHUTDOWN" }),
      );
    }
    for (const wake of this.waiting.splice(0)) wake();
    const all = Promise.allSettled([...this.live.values()].map((j) => j.done));
    await Promise.race([all, sleep(timeoutMs)]);
  }

  private track(record: JobRecord): LiveJob {
    let notify = () => {};
    const job: LiveJob = {
      record: { ...record, progress: { ...record.progress } },
      controller: new AbortController(),
      version: 0,
      changed: new Promise<void>((r) => (notify = r)),
      notify,
      lastPersist: 0,
      done: Promise.resolve(),
    };
    job.notify = notify;
    this.live.set(record.id, job);
    return job;
  }

  private bump(job: LiveJob): void {
    job.version++;
    const notify = job.notify;
    job.changed = new Promise<void>((r) => (job.notify = r));
    notify();
  }

  private async acquireSlot(signal: AbortSignal): Promise<void> {
    while (this.running >= this.maxJobs && !signal.aborted && !this.closed) {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    this.running++;
  }

  private releaseSlot(): void {
    this.running--;
    this.waiting.shift()?.();
  }

  private async execute(
    job: LiveJob,
    work: JobWork,
    cleanup: (job: JobRecord, error: EngineError) => Promise<void>,
  ): Promise<void> {
    const { signal } = job.controller;
    const log = this.log.child({ job: job.record.id, kind: job.record.kind, volume: job.record.volume });
    await this.acquireSlot(signal);
    try {
      if (signal.aborted) throw signal.reason;
      job.record.state = "RUNNING";
      job.record.startTime = Date.now();
      job.record.progress.phase = "running";
      this.catalog.updateJob(job.record.id, {
        state: "RUNNING",
        startTime: job.record.startTime,
        progress: job.record.progress,
      });
      this.bump(job);
      log.info("job started");
      const ctx: JobContext = {
        signal,
        progress: (done, total, phase) => {
          const p = job.record.progress;
          p.doneBytes = Math.max(p.doneBytes, done);
          p.totalBytes = total;
          if (phase !== undefined) p.phase = phase;
          const now = Date.now();
          if (now - job.lastPersist >= PERSIST_INTERVAL_MS) {
            job.lastPersist = now;
            this.catalog.updateJob(job.record.id, { progress: p });
          }
          this.bump(job);
        },
      };
      await work(ctx);
      job.record.state = "SUCCEEDED";
      job.record.progress.doneBytes = Math.max(job.record.progress.doneBytes, job.record.progress.totalBytes);
      job.record.progress.phase = "done";
      log.info("job succeeded");
    } catch (raw) {
      const error = EngineError.from(signal.aborted && isAbort(raw) ? signal.reason : raw);
      const cancelled = error.code === "CANCELLED" && job.record.cancelRequested;
      job.record.state = cancelled ? "CANCELLED" : "FAILED";
      job.record.error = jobError(error);
      job.record.progress.phase = cancelled ? "cancelled" : "failed";
      if (job.record.error.code === "INTERNAL") log.error({ err: raw }, "job failed with an internal error");
      else
        log.warn({ code: error.code, reason: error.reason, message: error.message }, "job did not succeed");
      try {
        await cleanup({ ...job.record }, error);
      } catch (cleanupErr) {
        log.error(
          { err: cleanupErr },
          "cleaning up after the job failed; reconcile will finish it at the next start",
        );
      }
    } finally {
      this.releaseSlot();
    }
    job.record.endTime = Date.now();
    this.catalog.updateJob(job.record.id, {
      state: job.record.state,
      endTime: job.record.endTime,
      progress: job.record.progress,
      error: job.record.error ?? null,
    });
    this.live.delete(job.record.id);
    this.bump(job);
  }
}

/** What a job record keeps of an error: never the text of an INTERNAL one (it may carry host details). */
function jobError(error: EngineError): JobErrorRecord {
  const wire = toWireError(error);
  return { code: error.code, message: wire.message, reason: wire.reason };
}

function isAbort(err: unknown): boolean {
  return (
    (err instanceof Error && err.name === "AbortError") ||
    (err instanceof EngineError && (err.code === "CANCELLED" || err.code === "DEADLINE_EXCEEDED"))
  );
}

function abortPromise(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}
