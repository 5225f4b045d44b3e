import type { JobSnapshot } from "@vdisk/sdk";
import cliProgress from "cli-progress";
import { formatSize } from "./sizes.js";

/** `1m05s`, `3h02m`, `42s`; `--` when unknown. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds <= 0) return "--";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/**
 * A terminal progress bar for a job: bar, percentage, bytes done/total, rate and ETA. Rate and ETA are the
 * server's (it sees the real work); until it reports them they are estimated from what this process saw.
 */
export class JobProgressBar {
  private readonly bar: cliProgress.SingleBar;
  private started = false;
  private readonly startedAt = Date.now();
  private last: JobSnapshot | undefined;

  constructor(
    private readonly label: string,
    stream: NodeJS.WriteStream = process.stdout,
  ) {
    this.bar = new cliProgress.SingleBar(
      {
        format: "{label} [{bar}] {percentage}% | {doneText}/{totalText} | {rateText} | ETA {etaText}",
        barCompleteChar: "#",
        barIncompleteChar: "-",
        barsize: 30,
        hideCursor: true,
        stream,
        fps: 10,
        etaBuffer: 20,
      },
      cliProgress.Presets.legacy,
    );
  }

  update(s: JobSnapshot): void {
    this.last = s;
    const elapsed = (Date.now() - this.startedAt) / 1000;
    const rate = s.bytesPerSecond > 0 ? s.bytesPerSecond : elapsed > 0 ? s.doneBytes / elapsed : 0;
    const eta =
      s.etaSeconds > 0
        ? s.etaSeconds
        : rate > 0 && s.totalBytes > s.doneBytes
          ? (s.totalBytes - s.doneBytes) / rate
          : 0;
    // cli-progress computes the percentage from value/total; a job that has not sized its work yet shows 0%.
    const total = Math.max(s.totalBytes, 1);
    const payload = {
      label: this.label,
      doneText: formatSize(s.doneBytes),
      totalText: formatSize(s.totalBytes),
      rateText: `${formatSize(rate)}/s`,
      etaText: formatDuration(eta),
    };
    if (!this.started) {
      this.bar.start(total, Math.min(s.doneBytes, total), payload);
      this.started = true;
      return;
    }
    this.bar.setTotal(total);
    this.bar.update(Math.min(s.doneBytes, total), payload);
  }

  /** Removes the bar from the screen for a prompt; `resume` draws it again. */
  pause(): void {
    if (!this.started) return;
    this.bar.stop();
    this.started = false;
  }

  resume(): void {
    if (this.last) this.update(this.last);
  }

  stop(): void {
    if (this.started) this.bar.stop();
    this.started = false;
  }
}
