import { VdiskError } from "@vdisk/sdk";

/** The CLI's exit codes (also listed in `vdisk --help` and cli/README.md). */
export const EXIT = {
  ok: 0,
  /** The server (or a local file operation) reported a failure. */
  failed: 1,
  /** Bad command line. */
  usage: 2,
  /** The server could not be reached. */
  connection: 3,
  /** Interrupted, or the job was cancelled. */
  interrupted: 130,
} as const;

export const EXIT_CODES_HELP = `Exit codes:
  0    success
  1    the operation failed (the server's code, reason and message are printed)
  2    usage error (bad command, option or value)
  3    connection failure (server unreachable)
  130  interrupted (Ctrl-C) or the job was cancelled`;

/** A command-line mistake found after parsing (e.g. a combination of options): exit 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/** Ends the process with a given code after the message was printed (e.g. cancelled job → 130). */
export class ExitRequest extends Error {
  override readonly name = "ExitRequest";
  constructor(readonly exitCode: number) {
    super(`exit ${exitCode}`);
  }
}

/** UNAVAILABLE is what a refused, reset or unresolvable connection (and a draining server) turns into. */
export function isConnectionFailure(err: unknown): boolean {
  return err instanceof VdiskError && err.code === "unavailable";
}

/** `error: not_found (VOLUME_NOT_FOUND): volume "x" does not exist` — code, reason and message on one line. */
export function describeError(err: unknown): string {
  if (err instanceof VdiskError) {
    const reason = err.reason ? ` (${err.reason})` : "";
    return `${err.code}${reason}: ${err.message}`;
  }
  if (err instanceof Error) return err.message;
  return String(err);
}

/** What `--json` prints for a failure. */
export function errorJson(err: unknown): Record<string, unknown> {
  if (err instanceof VdiskError)
    return {
      error: {
        code: err.code,
        status: err.status,
        reason: err.reason ?? null,
        message: err.message,
        metadata: err.metadata,
      },
    };
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return { error: { code: code ?? "error", message: describeError(err) } };
}
