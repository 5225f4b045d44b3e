import { EngineError, throwIfAborted } from "@vdisk/engine";
import { describe, expect, it } from "vitest";
import { type JobContext, JobRunner } from "./job-runner.js";
import type { JobSnapshot } from "./job-types.js";
import { MemoryJobStore } from "./memory-job-store.js";
import { VolumeLocks } from "./volume-locks.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function makeRunner(opts: Partial<ConstructorParameters<typeof JobRunner>[0]> = {}) {
  const store = new MemoryJobStore();
  const runner = new JobRunner({ store, locks: new VolumeLocks(), watchIntervalMs: 20, ...opts });
  return { store, runner };
}

/** A job that advances `steps` times, checking for cancel at each step (its safe points). */
function steppingJob(steps: number, stepMs: number) {
  return async (ctx: JobContext) => {
    for (let i = 1; i <= steps; i++) {
      throwIfAborted(ctx.signal);
      await sleep(stepMs);
      ctx.progress(i * 100, steps * 100, "working");
    }
    return "finished";
  };
}

async function collect(it: AsyncIterable<JobSnapshot>): Promise<JobSnapshot[]> {
  const out: JobSnapshot[] = [];
  for await (const s of it) out.push(s);
  return out;
}

describe("JobRunner", () => {
  it("stores a short job twice: QUEUED at submit and its end (RUNNING and progress steps get no write)", async () => {
    const { runner, store } = makeRunner({ persistIntervalMs: 60_000 });
    const { job } = runner.submit({ kind: "CREATE_VOLUME", volume: "v", locks: [], run: steppingJob(20, 1) });
    const states: string[] = [];
    const save = store.saveJob.bind(store);
    store.saveJob = (j) => {
      states.push(j.state);
      save(j);
    };
    expect(store.saves).toBe(1);
    expect((await collect(runner.watch(job.id))).at(-1)?.state).toBe("SUCCEEDED");
    expect(states).toEqual(["SUCCEEDED"]);
    expect(store.getJob(job.id)).toMatchObject({ state: "SUCCEEDED", progress: { doneBytes: 2000 } });
  });

  it("commitSuccess stores the job's effect with its SUCCEEDED row, and nothing is stored over it", async () => {
    const { runner, store } = makeRunner();
    const effects: string[] = [];
    const { job } = runner.submit({
      kind: "CREATE_VOLUME",
      volume: "v",
      locks: [],
      totalBytes: 10,
      run: async (ctx) => {
        ctx.progress(5, 10);
        ctx.commitSuccess(() => effects.push("ready"));
        expect(store.getJob(ctx.jobId)?.state).toBe("SUCCEEDED");
        ctx.progress(7, 10); // too late to change anything
        runner.cancel(ctx.jobId);
        throw new Error("after the commit");
      },
    });
    const last = (await collect(runner.watch(job.id))).at(-1);
    expect(effects).toEqual(["ready"]);
    expect(last).toMatchObject({ state: "SUCCEEDED", progress: { doneBytes: 10, totalBytes: 10 } });
    expect(store.getJob(job.id)).toMatchObject({ state: "SUCCEEDED", cancelRequested: false });
  });

  it("runs a job to SUCCEEDED with monotonic, coalesced progress and a terminal snapshot", async () => {
    const { runner, store } = makeRunner();
    const { job } = runner.submit({
      kind: "CREATE_VOLUME",
      volume: "v",
      locks: [],
      run: steppingJob(100, 2),
    });
    const events = await collect(runner.watch(job.id));
    const last = events.at(-1);
    expect(last?.state).toBe("SUCCEEDED");
    expect(last?.result).toBe("finished");
    expect(last?.progress.doneBytes).toBe(10000);
    const done = events.map((e) => e.progress.doneBytes);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    // 100 progress reports 2 ms apart, watcher interval 20 ms, plus one milestone per 10 %: coalescing
    // must still drop most of them.
    expect(events.length).toBeLessThan(50);
    expect(store.getJob(job.id)?.state).toBe("SUCCEEDED");
  });

  it("sends the snapshot at each 10 % of progress even when the job is faster than the watch interval", async () => {
    const { runner } = makeRunner({ watchIntervalMs: 60_000 });
    const { job } = runner.submit({
      kind: "CREATE_VOLUME",
      volume: "v",
      locks: [],
      run: async (ctx) => {
        // 16 steps with no pause between some of them: several tenths may pass before the watcher runs.
        for (let i = 1; i <= 16; i++) {
          if (i % 4 === 0) await sleep(1);
          ctx.progress(i * 64, 16 * 64, "preallocate");
        }
        return "created";
      },
    });
    const events = await collect(runner.watch(job.id));
    expect(events.at(-1)?.state).toBe("SUCCEEDED");
    const done = events.map((e) => e.progress.doneBytes);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    const tenths = new Set(done.map((d) => Math.floor((d * 10) / 1024)));
    for (let t = 1; t <= 10; t++) expect(tenths.has(t)).toBe(true);
    // Distinct done values, as a progress bar counts them: at least the ten steps.
    expect(new Set(done.filter((d) => d > 0)).size).toBeGreaterThanOrEqual(10);
  });

  it("starts a late watcher at the current snapshot, not at past milestones", async () => {
    const { runner } = makeRunner({ watchIntervalMs: 60_000 });
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const { job } = runner.submit({
      kind: "CREATE_VOLUME",
      volume: "v",
      locks: [],
      run: async (ctx) => {
        for (let i = 1; i <= 5; i++) ctx.progress(i * 100, 1000);
        await gate;
        ctx.progress(1000, 1000);
        return "ok";
      },
    });
    await sleep(10);
    const watching = collect(runner.watch(job.id));
    await sleep(10);
    release();
    const done = (await watching).map((e) => e.progress.doneBytes);
    expect(done[0]).toBe(500);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect(done.at(-1)).toBe(1000);
  });

  it("cancels at the next safe point and ends CANCELLED with a CANCELLED error", async () => {
    const { runner } = makeRunner();
    const { job } = runner.submit({
      kind: "CREATE_VOLUME",
      volume: "v",
      locks: [],
      run: steppingJob(1000, 5),
    });
    await sleep(30);
    const afterCancel = runner.cancel(job.id);
    expect(afterCancel.cancelRequested).toBe(true);
    const events = await collect(runner.watch(job.id));
    const last = events.at(-1);
    expect(last?.state).toBe("CANCELLED");
    expect(last?.error?.code).toBe("CANCELLED");
    expect(last?.progress.doneBytes).toBeLessThan(100_000);
  });

  it("ends FAILED with the engine error's code and reason", async () => {
    const { runner } = makeRunner();
    const { job } = runner.submit({
      kind: "CHECK_VOLUME",
      volume: "v",
      locks: [],
      run: async () => {
        throw new EngineError("NO_SPACE", "disk full", { reason: "HOST_ENOSPC" });
      },
    });
    const last = (await collect(runner.watch(job.id))).at(-1);
    expect(last?.state).toBe("FAILED");
    expect(last?.error).toMatchObject({ code: "NO_SPACE", reason: "HOST_ENOSPC" });
  });

  it("returns the same job for a repeated request id", () => {
    const { runner } = makeRunner();
    const spec = {
      kind: "CREATE_VOLUME" as const,
      volume: "v",
      requestId: "r-1",
      locks: [],
      run: steppingJob(5, 5),
    };
    const a = runner.submit(spec);
    const b = runner.submit(spec);
    expect(b.existing).toBe(true);
    expect(b.job.id).toBe(a.job.id);
  });

  it("refuses a second job on a volume another job holds (VOLUME_BUSY)", () => {
    const { runner } = makeRunner();
    runner.submit({
      kind: "RESIZE_VOLUME",
      volume: "v",
      locks: [{ volume: "v", mode: "exclusive" }],
      run: steppingJob(50, 5),
    });
    expect(() =>
      runner.submit({
        kind: "CHECK_VOLUME",
        volume: "v",
        locks: [{ volume: "v", mode: "exclusive" }],
        run: steppingJob(1, 1),
      }),
    ).toThrowError(expect.objectContaining({ code: "FAILED_PRECONDITION", reason: "VOLUME_BUSY" }));
  });

  it("queues past maxRunning and rejects past maxAdmitted", async () => {
    const { runner } = makeRunner({ maxRunning: 1, maxAdmitted: 2 });
    const a = runner.submit({ kind: "CHECK_VOLUME", volume: "a", locks: [], run: steppingJob(10, 5) });
    const b = runner.submit({ kind: "CHECK_VOLUME", volume: "b", locks: [], run: steppingJob(2, 5) });
    await sleep(5);
    expect(runner.get(a.job.id)?.state).toBe("RUNNING");
    expect(runner.get(b.job.id)?.state).toBe("QUEUED");
    expect(() =>
      runner.submit({ kind: "CHECK_VOLUME", volume: "c", locks: [], run: steppingJob(1, 1) }),
    ).toThrowError(expect.objectContaining({ code: "NO_SPACE", reason: "TOO_MANY_JOBS" }));
    const lastB = (await collect(runner.watch(b.job.id))).at(-1);
    expect(lastB?.state).toBe("SUCCEEDED");
  });

  it("cancels a queued job without running it, and frees its slot", async () => {
    const { runner } = makeRunner({ maxRunning: 1 });
    let ran = false;
    runner.submit({ kind: "CHECK_VOLUME", volume: "a", locks: [], run: steppingJob(5, 5) });
    const q = runner.submit({
      kind: "CHECK_VOLUME",
      volume: "b",
      locks: [],
      run: async () => {
        ran = true;
      },
    });
    runner.cancel(q.job.id);
    const last = (await collect(runner.watch(q.job.id))).at(-1);
    expect(last?.state).toBe("CANCELLED");
    expect(ran).toBe(false);
  });

  it("lets a watcher leave without affecting the job", async () => {
    const { runner } = makeRunner();
    const { job } = runner.submit({ kind: "CREATE_VOLUME", volume: "v", locks: [], run: steppingJob(10, 5) });
    const leave = new AbortController();
    for await (const _ of runner.watch(job.id, leave.signal)) {
      leave.abort();
    }
    const last = (await collect(runner.watch(job.id))).at(-1);
    expect(last?.state).toBe("SUCCEEDED");
  });

  it("cancels unfinished jobs on shutdown and refuses new ones", async () => {
    const { runner } = makeRunner();
    const { job } = runner.submit({
      kind: "CREATE_VOLUME",
      volume: "v",
      locks: [],
      run: steppingJob(1000, 5),
    });
    await runner.shutdown(2000);
    expect(runner.get(job.id)?.state).toBe("CANCELLED");
    expect(() =>
      runner.submit({ kind: "CHECK_VOLUME", volume: "x", locks: [], run: steppingJob(1, 1) }),
    ).toThrowError(expect.objectContaining({ reason: "DRAINING" }));
  });

  describe("when the store can't record snapshots (the catalog's disk is full)", () => {
    /** The real in-memory store, failing the way the SQLite catalog does on a full disk while `full` is set. */
    class FullableStore extends MemoryJobStore {
      full = false;
      override saveJob(job: JobSnapshot): void {
        if (this.full) throw new EngineError("NO_SPACE", "disk full", { reason: "HOST_ENOSPC" });
        super.saveJob(job);
      }
    }

    it("refuses a job it can't record, and the job holds no lock", async () => {
      const store = new FullableStore();
      const runner = new JobRunner({ store, locks: new VolumeLocks(), watchIntervalMs: 20 });
      const locks = [{ volume: "v", mode: "exclusive" as const }];
      store.full = true;
      expect(() =>
        runner.submit({ kind: "CREATE_VOLUME", volume: "v", locks, run: steppingJob(1, 1) }),
      ).toThrowError(expect.objectContaining({ code: "NO_SPACE" }));
      expect(runner.liveJobs()).toEqual([]);
      store.full = false;
      const { job } = runner.submit({ kind: "CREATE_VOLUME", volume: "v", locks, run: steppingJob(1, 1) });
      expect((await collect(runner.watch(job.id))).at(-1)?.state).toBe("SUCCEEDED");
    });

    it("still ends the job for its watchers and releases its locks, reporting what it could not store", async () => {
      const store = new FullableStore();
      const unsaved: string[] = [];
      const runner = new JobRunner({
        store,
        locks: new VolumeLocks(),
        watchIntervalMs: 20,
        onPersistError: (_err, job) => unsaved.push(job.state),
      });
      const locks = [{ volume: "v", mode: "exclusive" as const }];
      const { job } = runner.submit({
        kind: "CREATE_VOLUME",
        volume: "v",
        locks,
        run: async () => {
          store.full = true;
          throw new EngineError("NO_SPACE", "host I/O error: ENOSPC", { reason: "HOST_ENOSPC" });
        },
      });
      const last = (await collect(runner.watch(job.id))).at(-1);
      expect(last).toMatchObject({ state: "FAILED", error: { code: "NO_SPACE", reason: "HOST_ENOSPC" } });
      expect(unsaved).toContain("FAILED");
      store.full = false;
      const next = runner.submit({ kind: "CREATE_VOLUME", volume: "v", locks, run: steppingJob(1, 1) });
      expect((await collect(runner.watch(next.job.id))).at(-1)?.state).toBe("SUCCEEDED");
    });
  });
});
