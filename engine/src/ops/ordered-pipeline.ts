import { EngineError, throwIfAborted } from "../errors.js";

/**
 * One unit of pipelined work over a guest range. `prepare` may run concurrently with other steps'
 * `prepare` and `commit`; `commit` is *started* in step order (each one only after the previous step's
 * commit has started), so writes reach a driver in ascending guest order even though they overlap —
 * qcow2 then allocates host clusters in guest order, as qemu-img convert does without -W.
 */
export interface PipelineStep<T> {
  /** Guest range [start, end) this step covers; steps come in ascending, non-overlapping order. */
  start: number;
  end: number;
  /** Absent for ranges that need no I/O (holes): they only count towards progress. */
  prepare?: () => Promise<T>;
  /** Must start its I/O synchronously (before its first await) for the ordering guarantee to hold. */
  commit?: (prepared: T) => Promise<void>;
}

export interface PipelineOptions {
  /** Steps with I/O in flight at once (each holds its buffer until its commit ends). */
  maxInFlight: number;
  signal?: AbortSignal;
  /** Called with the end of the longest fully committed prefix: monotonic, reaches the last step's end. */
  onDone?: (doneUpTo: number) => void;
}

interface Slot {
  end: number;
  finished: boolean;
}

/**
 * Runs steps with bounded concurrency (QEMU qemu-img convert's coroutines, in-order write mode).
 * Cancellation and failures are checked before each new step starts; either way every step already
 * started is allowed to settle before the pipeline returns, so the caller never closes an image with
 * I/O still running against it.
 */
export async function runOrderedPipeline<T>(
  steps: AsyncIterable<PipelineStep<T>>,
  opts: PipelineOptions,
): Promise<void> {
  const { signal } = opts;
  const running = new Set<Promise<void>>();
  const order: Slot[] = [];
  let failure: { error: unknown } | undefined;
  let previousCommitStarted: Promise<void> = Promise.resolve();
  let reported = -1;

  const reportProgress = (): void => {
    let upTo = reported;
    for (let head = order[0]; head?.finished === true; head = order[0]) {
      upTo = head.end;
      order.shift();
    }
    if (upTo > reported) {
      reported = upTo;
      opts.onDone?.(upTo);
    }
  };

  const start = (step: PipelineStep<T>): void => {
    const slot: Slot = { end: step.end, finished: false };
    order.push(slot);
    const { prepare, commit } = step;
    if (prepare === undefined) {
      slot.finished = true;
      reportProgress();
      return;
    }
    const previous = previousCommitStarted;
    let markCommitStarted!: () => void;
    previousCommitStarted = new Promise<void>((resolve) => {
      markCommitStarted = resolve;
    });
    const task = (async () => {
      try {
        const prepared = await prepare();
        await previous;
        // A failed or cancelled copy stops writing: its target is discarded anyway.
        if (failure !== undefined || signal?.aborted === true) return;
        const committing = commit?.(prepared);
        markCommitStarted();
        await committing;
        slot.finished = true;
      } catch (error) {
        failure ??= { error };
      } finally {
        markCommitStarted();
      }
    })();
    running.add(task);
    void task.finally(() => {
      running.delete(task);
      if (failure !== undefined) return;
      // A throwing progress callback fails the pipeline like any other error, never as an unhandled rejection.
      try {
        reportProgress();
      } catch (error) {
        failure = { error };
      }
    });
  };

  try {
    for await (const step of steps) {
      while (running.size >= opts.maxInFlight && failure === undefined) await Promise.race(running);
      if (failure !== undefined || signal?.aborted === true) break;
      start(step);
    }
  } catch (error) {
    failure ??= { error };
  }
  while (running.size > 0) await Promise.race(running);
  if (failure !== undefined) throw EngineError.from(failure.error);
  throwIfAborted(signal);
  reportProgress();
}
