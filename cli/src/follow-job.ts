import { createInterface } from "node:readline";
import { type JobHandle, type JobSnapshot, VdiskError } from "@vdisk/sdk";
import { EXIT, ExitRequest } from "./exit-codes.js";
import { type Output, printJsonLine } from "./output.js";
import { JobProgressBar } from "./progress.js";

export interface FollowOptions {
  output: Output;
  /** Progress bar and Ctrl-C prompt (stdin and stdout are terminals). */
  interactive: boolean;
  /** Shown before the bar, e.g. `create disk1`. */
  label: string;
  /** Called for every snapshot when no bar is drawn (e.g. `job watch` lines). */
  onSnapshot?: (snapshot: JobSnapshot) => void;
}

type Decision = "cancel" | "detach";

/** Asks the operator what Ctrl-C should mean; a second Ctrl-C at the prompt detaches (nothing is lost). */
function askCancelOrDetach(): { answer: Promise<Decision>; close: () => void } {
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: true });
  const answer = new Promise<Decision>((resolve) => {
    const ask = () =>
      rl.question("\nCancel the job (c) or detach and let it run (d)? ", (text) => {
        const choice = text.trim().toLowerCase();
        if (choice === "c" || choice === "cancel") resolve("cancel");
        else if (choice === "d" || choice === "detach") resolve("detach");
        else ask();
      });
    rl.on("SIGINT", () => resolve("detach"));
    ask();
  });
  return { answer: answer.finally(() => rl.close()), close: () => rl.close() };
}

function detachMessage(output: Output, jobId: string): void {
  if (output.json) printJsonLine(output, { detached: true, jobId });
  else
    output.err(
      `Detached: job ${jobId} keeps running on the server.\nFollow it with: vdisk job watch ${jobId}\n`,
    );
}

/**
 * Follows a job to its end: draws progress (terminal) or reports snapshots, and handles Ctrl-C — on a terminal
 * it asks whether to cancel (exit 130 once the job is CANCELLED) or detach (exit 0); without a terminal SIGINT
 * detaches (exit 130, the job keeps running). Resolves with the job's result; a cancelled job throws
 * ExitRequest(130), a failed one its VdiskError.
 */
export async function followJob<T>(handle: JobHandle<T>, options: FollowOptions): Promise<T> {
  const { output, interactive } = options;
  const bar = interactive ? new JobProgressBar(options.label) : undefined;
  let prompting = false;
  let interrupt!: (decision: Decision) => void;
  const interrupted = new Promise<Decision>((resolve) => {
    interrupt = resolve;
  });

  let prompt: { close: () => void } | undefined;
  const onSigint = () => {
    if (prompting) return;
    if (!interactive) {
      interrupt("detach");
      return;
    }
    prompting = true;
    bar?.pause();
    const asked = askCancelOrDetach();
    prompt = asked;
    void asked.answer.then((decision) => interrupt(decision));
  };
  process.on("SIGINT", onSigint);

  const progress = (async () => {
    try {
      for await (const snapshot of handle) {
        if (bar) {
          if (!prompting) bar.update(snapshot);
        } else options.onSnapshot?.(snapshot);
      }
    } catch {
      // The handle's result carries the failure; iteration errors add nothing.
    }
  })();

  try {
    const first = await Promise.race([
      handle.result.then(
        (value) => ({ kind: "done" as const, value }),
        (error: unknown) => ({ kind: "failed" as const, error }),
      ),
      interrupted.then((decision) =>
        decision === "cancel" ? { kind: "cancel" as const } : { kind: "detach" as const },
      ),
    ]);
    if (first.kind === "detach") {
      bar?.stop();
      const jobId = await handle.jobId;
      detachMessage(output, jobId);
      throw new ExitRequest(interactive ? EXIT.ok : EXIT.interrupted);
    }
    if (first.kind === "cancel") {
      const jobId = await handle.jobId;
      output.err(`Cancelling job ${jobId}…\n`);
      await handle.cancel();
      const outcome = await handle.result.then(
        () => "succeeded",
        (error: unknown) => error,
      );
      if (outcome === "succeeded") {
        output.err(`Job ${jobId} finished before it could be cancelled.\n`);
        return await handle.result;
      }
      throw outcome;
    }
    await progress;
    bar?.stop();
    if (first.kind === "failed") throw first.error;
    return first.value;
  } catch (err) {
    bar?.stop();
    if (err instanceof VdiskError && err.code === "canceled") {
      const jobId = await handle.jobId.catch(() => "?");
      if (output.json) printJsonLine(output, { cancelled: true, jobId, message: err.message });
      else output.err(`Job ${jobId} was cancelled.\n`);
      throw new ExitRequest(EXIT.interrupted);
    }
    throw err;
  } finally {
    prompt?.close();
    process.off("SIGINT", onSigint);
  }
}
