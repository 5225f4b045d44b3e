import { randomUUID } from "node:crypto";
import { EngineError } from "@vdisk/engine";
import { isTerminal, type JobKind, type JobProgress, type JobSnapshot, type JobStore } from "./job-types.js";
import type { LockMode, VolumeLocks } from "./volume-locks.js";

/** What a running job sees: its cancellation signal and a cheap progress reporter. */
export interface JobContext {
  readonly jobId: string;
  /** Fires on CancelJob, cancel-on-disconnect, and server shutdown. Check it at safe points only. */
  readonly signal: AbortSignal;
  /** Reports progress; `done` is clamped to be monotonic. Cheap: call as often as convenient. */
  progress(done: number, total: number, phase?: string): void;
  /** Changes the phase without touching the byte counts. */
  phase(phase: string): void;
  /**
   * Stores `write` (the job's effect on the catalog, e.g. a new volume turning READY) in the same
   * transaction as the job's SUCCEEDED row: one durable commit instead of two, and no crash window in
   * which the effect is stored but the job still looks interrupted. Call it last in `run`: once it
   * returns, the job has succeeded, whatever `run` does afterwards. When the store refuses, neither is
   * stored and this throws, and `run` fails as with any other error.
   */
  commitSuccess(write: () => void): void;
}

export interface JobSpec<R> {
  kind: JobKind;
  volume: string;
  requestId?: string;
  /** Volumes the job holds for its whole life; a conflict fails the submit with VOLUME_BUSY. */
  locks: { volume: string; mode: LockMode }[];
  /** Initial estimate of bytes to process (0 if unknown). */
  totalBytes?: number;
  /**
   * Writes stored in the same transaction as the job's QUEUED row (e.g. the record of the volume a
   * creation makes): either both are stored and the job runs, or neither is and submit throws.
   */
  recordWith?: () => void;
  run(ctx: JobContext): Promise<R>;
}

export interface JobRunnerOptions {
  store: JobStore;
  locks: VolumeLocks;
  /** Jobs running at once; more wait QUEUED. */
  maxRunning?: number;
  /** Jobs admitted (running + queued); beyond it submits fail with RESOURCE_EXHAUSTED. */
  maxAdmitted?: number;
  /** Minimum gap between non-terminal snapshots sent to watchers (coalesced, latest wins). */
  watchIntervalMs?: number;
  /** Minimum gap between progress writes to the store. */
  persistIntervalMs?: number;
  onJobEnd?: (job: JobSnapshot) => void;
  /** A snapshot could not be stored (e.g. the catalog's disk is full); the job itself carries on. */
  onPersistError?: (err: unknown, job: JobSnapshot) => void;
}

interface LiveJob {
  snapshot: JobSnapshot;
  controller: AbortController;
  listeners: Set<() => void>;
  releaseLocks: (() => void)[];
  start: () => void;
  /** Counted against maxRunning (set when the pump starts it, not when a queued job is cancelled). */
  counted: boolean;
  lastPersist: number;
  /** The SUCCEEDED snapshot stored by commitSuccess: the job's final row, never overwritten. */
  committed?: JobSnapshot;
  rate: RateMeter;
  settled: Promise<void>;
  /**
   * The snapshots at which progress first reached each further tenth of the total (at most
   * PROGRESS_STEPS): every watcher sends these besides the time-coalesced latest, so even a job of a
   * few tens of milliseconds shows its progress in steps.
   */
  milestones: JobSnapshot[];
  /** Tenths of the total reached so far. */
  tenthsReached: number;
}

/** Progress milestones per job: one snapshot per 10 % of the total. */
const PROGRESS_STEPS = 10;

/** Exponentially weighted throughput over progress reports, for bytes_per_second and ETA. */
class RateMeter {
  #lastTime = 0;
  #lastDone = 0;
  #rate = 0;
  update(done: number, now: number): number {
    if (this.#lastTime === 0) {
      this.#lastTime = now;
      this.#lastDone = done;
      return 0;
    }
    const dt = (now - this.#lastTime) / 1000;
    if (dt >= 0.2) {
      const instant = (done - this.#lastDone) / dt;
      this.#rate = this.#rate === 0 ? instant : 0.7 * this.#rate + 0.3 * instant;
      this.#lastTime = now;
      this.#lastDone = done;
    }
    return this.#rate;
  }
}

/**
 * Runs long operations as background jobs: QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED.
 * The runner owns each job's AbortController; callers come and go (watch, cancel) without affecting it.
 * Snapshots are immutable and coalesced for watchers, so a slow watcher never queues stale progress.
 */
export class JobRunner {
  readonly #opts: Required<Omit<JobRunnerOptions, "onJobEnd" | "onPersistError">> &
    Pick<JobRunnerOptions, "onJobEnd" | "onPersistError">;
  readonly #live = new Map<string, LiveJob>();
  readonly #queue: LiveJob[] = [];
  #running = 0;
  #closed = false;

  constructor(opts: JobRunnerOptions) {
    this.#opts = { maxRunning: 4, maxAdmitted: 64, watchIntervalMs: 100, persistIntervalMs: 1000, ...opts };
  }

  /**
   * Admits a job, or returns the existing one when `requestId` was seen before (`existing: true`).
   * Fails with RESOURCE_EXHAUSTED past the admission limit, FAILED_PRECONDITION (VOLUME_BUSY) when
   * another job or stream holds a volume it needs, UNAVAILABLE-like CANCELLED while shutting down.
   */
  submit<R>(spec: JobSpec<R>): { job: JobSnapshot<R>; existing: boolean } {
    if (spec.requestId) {
      const prior = this.get(spec.requestId, true);
      if (prior) return { job: prior as JobSnapshot<R>, existing: true };
    }
    if (this.#closed)
      throw new EngineError("FAILED_PRECONDITION", "server is shutting down", { reason: "DRAINING" });
    const admitted = [...this.#live.values()].filter((j) => !isTerminal(j.snapshot.state)).length;
    if (admitted >= this.#opts.maxAdmitted) {
      throw new EngineError(
        "NO_SPACE",
        `too many jobs (${admitted} admitted, limit ${this.#opts.maxAdmitted})`,
        {
          reason: "TOO_MANY_JOBS",
        },
      );
    }
    const id = `job-${randomUUID()}`;
    const releaseLocks: (() => void)[] = [];
    try {
      for (const l of spec.locks) releaseLocks.push(this.#opts.locks.acquire(l.volume, l.mode, id));
    } catch (err) {
      for (const release of releaseLocks) release();
      throw err;
    }
    const controller = new AbortController();
    let start!: () => void;
    const started = new Promise<void>((resolve) => {
      start = resolve;
    });
    const live: LiveJob = {
      snapshot: {
        id,
        kind: spec.kind,
        volume: spec.volume,
        state: "QUEUED",
        progress: {
          doneBytes: 0,
          totalBytes: spec.totalBytes ?? 0,
          bytesPerSecond: 0,
          etaSeconds: 0,
          phase: "queued",
        },
        createTime: new Date(),
        requestId: spec.requestId,
        cancelRequested: false,
      },
      controller,
      listeners: new Set(),
      releaseLocks,
      start,
      counted: false,
      lastPersist: 0,
      rate: new RateMeter(),
      settled: Promise.resolve(),
      milestones: [],
      tenthsReached: 0,
    };
    try {
      // Saved before it is registered: a job the catalog could not record (e.g. a full disk) never ran.
      this.#atomically(() => {
        spec.recordWith?.();
        this.#opts.store.saveJob(live.snapshot);
      });
    } catch (err) {
      for (const release of releaseLocks) release();
      throw err;
    }
    live.lastPersist = Date.now();
    this.#live.set(id, live);
    live.settled = started.then(() => this.#execute(live, spec));
    this.#queue.push(live);
    this.#pump();
    return { job: live.snapshot as JobSnapshot<R>, existing: false };
  }

  /** Latest snapshot by job id (or by request id when `byRequestId`). */
  get(key: string, byRequestId = false): JobSnapshot | undefined {
    if (byRequestId) {
      for (const j of this.#live.values()) if (j.snapshot.requestId === key) return j.snapshot;
      return this.#opts.store.findJobByRequestId(key);
    }
    return this.#live.get(key)?.snapshot ?? this.#opts.store.getJob(key);
  }

  /**
   * Snapshots of a job until it ends: the current one at once, then changes coalesced to at most one
   * per watchIntervalMs (latest wins), plus the snapshot at each further 10 % of progress, and always
   * the terminal one. done_bytes never decreases along the stream. Ends when the job ends or `signal` fires.
   */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<JobSnapshot> {
    const live = this.#live.get(id);
    if (!live) {
      const stored = this.#opts.store.getJob(id);
      if (!stored) throw new EngineError("NOT_FOUND", `job ${id} not found`, { reason: "JOB_NOT_FOUND" });
      yield stored;
      return;
    }
    let changed = true;
    let wake: (() => void) | undefined;
    const listener = () => {
      changed = true;
      wake?.();
    };
    const onAbort = () => wake?.();
    live.listeners.add(listener);
    signal?.addEventListener("abort", onAbort);
    try {
      let lastSent = 0;
      let lastSnapshot: JobSnapshot | undefined;
      // Milestones reached before this watcher came are history: it starts from the current snapshot.
      let nextMilestone = live.milestones.length;
      while (!signal?.aborted) {
        // Milestones first: each is older than the latest snapshot, so the order stays monotonic.
        if (nextMilestone < live.milestones.length) {
          const milestone = live.milestones[nextMilestone++];
          if (milestone !== undefined && milestone !== lastSnapshot && !olderThan(milestone, lastSnapshot)) {
            lastSnapshot = milestone;
            lastSent = Date.now();
            yield milestone;
          }
          continue;
        }
        if (!changed) {
          await new Promise<void>((resolve) => {
            wake = resolve;
          });
          wake = undefined;
          continue;
        }
        const snap = live.snapshot;
        const terminal = isTerminal(snap.state);
        const wait = lastSent + this.#opts.watchIntervalMs - Date.now();
        if (!terminal && wait > 0 && lastSnapshot) {
          // Coalesce: sleep out the interval; whatever is latest then is what gets sent.
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, wait);
            wake = () => {
              if (
                isTerminal(live.snapshot.state) ||
                signal?.aborted ||
                nextMilestone < live.milestones.length
              ) {
                clearTimeout(t);
                resolve();
              }
            };
          });
          wake = undefined;
          continue;
        }
        changed = false;
        if (snap !== lastSnapshot) {
          lastSnapshot = snap;
          lastSent = Date.now();
          yield snap;
        }
        if (terminal) return;
      }
    } finally {
      live.listeners.delete(listener);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Requests cancellation; returns the snapshot after recording it. Finished jobs are returned unchanged. */
  cancel(id: string, why = "cancelled by request"): JobSnapshot {
    const live = this.#live.get(id);
    if (!live) {
      const stored = this.#opts.store.getJob(id);
      if (!stored) throw new EngineError("NOT_FOUND", `job ${id} not found`, { reason: "JOB_NOT_FOUND" });
      return stored;
    }
    if (isTerminal(live.snapshot.state)) return live.snapshot;
    this.#update(live, { cancelRequested: true }, "now");
    live.controller.abort(new EngineError("CANCELLED", why, { reason: "JOB_CANCELLED" }));
    if (live.snapshot.state === "QUEUED") {
      const i = this.#queue.indexOf(live);
      if (i >= 0) this.#queue.splice(i, 1);
      live.start(); // #execute sees the aborted signal and ends it CANCELLED without running
    }
    return live.snapshot;
  }

  /** Jobs still in memory (running, queued, recently finished). */
  liveJobs(): JobSnapshot[] {
    return [...this.#live.values()].map((j) => j.snapshot);
  }

  /** Stops admitting, cancels every unfinished job, and waits (up to `graceMs`) for them to settle. */
  async shutdown(graceMs = 10_000): Promise<void> {
    this.#closed = true;
    for (const live of this.#live.values()) {
      if (!isTerminal(live.snapshot.state)) {
        live.controller.abort(
          new EngineError("CANCELLED", "server shutting down", { reason: "SERVER_SHUTDOWN" }),
        );
        if (live.snapshot.state === "QUEUED") live.start();
      }
    }
    const all = Promise.allSettled([...this.#live.values()].map((j) => j.settled));
    await Promise.race([all, new Promise((r) => setTimeout(r, graceMs).unref())]);
  }

  #pump(): void {
    while (this.#running < this.#opts.maxRunning && this.#queue.length > 0) {
      const next = this.#queue.shift();
      if (!next) break;
      this.#running++;
      next.counted = true;
      next.start();
    }
  }

  async #execute<R>(live: LiveJob, spec: JobSpec<R>): Promise<void> {
    const signal = live.controller.signal;
    try {
      if (signal.aborted) throw signal.reason;
      // RUNNING gets no commit of its own: after a crash, reconcile fails a job left QUEUED exactly as one
      // left RUNNING, so the row only catches up with the periodic progress writes or the final state.
      this.#update(live, {
        state: "RUNNING",
        startTime: new Date(),
        progress: { ...live.snapshot.progress, phase: "running" },
      });
      const ctx: JobContext = {
        jobId: live.snapshot.id,
        signal,
        progress: (done, total, phase) => this.#progress(live, done, total, phase),
        phase: (phase) =>
          this.#progress(live, live.snapshot.progress.doneBytes, live.snapshot.progress.totalBytes, phase),
        commitSuccess: (write) => {
          if (live.committed !== undefined || isTerminal(live.snapshot.state)) {
            throw new EngineError("INTERNAL", `job ${live.snapshot.id} already ended`, {
              reason: "JOB_ALREADY_ENDED",
            });
          }
          const succeeded = succeededSnapshot(live.snapshot);
          this.#atomically(() => {
            write();
            this.#opts.store.saveJob(succeeded);
          });
          live.committed = succeeded;
        },
      };
      const result = await spec.run(ctx);
      if (live.committed !== undefined) this.#update(live, { ...live.committed, result }, "never");
      else this.#update(live, { ...succeededSnapshot(live.snapshot), result }, "now");
    } catch (thrown) {
      if (live.committed !== undefined) {
        // The stored success is the outcome; what went wrong after it changed nothing that is recorded.
        this.#update(live, live.committed, "never");
        return;
      }
      const err = EngineError.from(thrown);
      const cancelled = signal.aborted && (err.code === "CANCELLED" || err.code === "DEADLINE_EXCEEDED");
      const reason = cancelled && signal.reason instanceof EngineError ? signal.reason : err;
      this.#update(
        live,
        {
          state: cancelled ? "CANCELLED" : "FAILED",
          endTime: new Date(),
          error: {
            code: cancelled ? "CANCELLED" : err.code,
            message: cancelled ? reason.message : err.message,
            reason: reason.reason,
            metadata: reason.metadata,
          },
          progress: { ...live.snapshot.progress, etaSeconds: 0, phase: cancelled ? "cancelled" : "failed" },
        },
        "now",
      );
    } finally {
      for (const release of live.releaseLocks) release();
      if (live.counted) this.#running--;
      this.#opts.onJobEnd?.(live.snapshot);
      this.#pump();
      // Keep finished jobs in memory a while so late watchers get the terminal snapshot quickly.
      setTimeout(() => this.#live.delete(live.snapshot.id), 10 * 60_000).unref();
    }
  }

  #progress(live: LiveJob, done: number, total: number, phase?: string): void {
    if (isTerminal(live.snapshot.state)) return;
    const prev = live.snapshot.progress;
    const doneBytes = Math.max(prev.doneBytes, Math.min(done, Math.max(total, done)));
    const totalBytes = Math.max(total, doneBytes);
    const rate = live.rate.update(doneBytes, Date.now());
    const etaSeconds = rate > 0 ? (totalBytes - doneBytes) / rate : 0;
    const tenths = totalBytes > 0 ? Math.floor((doneBytes * PROGRESS_STEPS) / totalBytes) : 0;
    const milestone = tenths > live.tenthsReached;
    if (milestone) live.tenthsReached = tenths;
    this.#update(
      live,
      {
        progress: {
          doneBytes,
          totalBytes,
          bytesPerSecond: Math.round(rate),
          etaSeconds,
          phase: phase ?? prev.phase,
        },
      },
      "interval",
      milestone,
    );
  }

  /**
   * Publishes a new snapshot to watchers and stores it: "now", "never" (already stored), or "interval"
   * (only if persistIntervalMs passed since the last write). Nothing is stored over a committed success.
   */
  #update(
    live: LiveJob,
    change: Partial<JobSnapshot>,
    persist: "now" | "never" | "interval" = "interval",
    milestone = false,
  ): void {
    live.snapshot = { ...live.snapshot, ...change };
    if (milestone) live.milestones.push(live.snapshot);
    const now = Date.now();
    const due =
      persist === "now" || (persist === "interval" && now - live.lastPersist >= this.#opts.persistIntervalMs);
    if (due && live.committed === undefined) {
      live.lastPersist = now;
      try {
        this.#opts.store.saveJob(live.snapshot);
      } catch (err) {
        // The in-memory snapshot stays authoritative for watchers (they must still see the job end); the
        // stored row lags behind, and a RUNNING row left behind is failed by reconcile at the next start.
        this.#opts.onPersistError?.(err, live.snapshot);
      }
    }
    for (const listener of live.listeners) listener();
  }

  /** Runs `fn` in one store transaction when the store has them. */
  #atomically(fn: () => void): void {
    const store = this.#opts.store;
    if (store.transaction === undefined) fn();
    else store.transaction(fn);
  }
}

/** The snapshot a job ends with when it succeeds: all its bytes done. */
function succeededSnapshot(snapshot: JobSnapshot): JobSnapshot {
  const p = snapshot.progress;
  const done = Math.max(p.doneBytes, p.totalBytes);
  return {
    ...snapshot,
    state: "SUCCEEDED",
    endTime: new Date(),
    progress: { ...p, doneBytes: done, totalBytes: done, etaSeconds: 0, phase: "done" },
  };
}

/** A snapshot whose progress lies behind one already sent (a milestone overtaken by the latest). */
function olderThan(snapshot: JobSnapshot, sent: JobSnapshot | undefined): boolean {
  return sent !== undefined && snapshot.progress.doneBytes < sent.progress.doneBytes;
}

export type { JobProgress };
