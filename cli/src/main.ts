import { CommanderError } from "commander";
import {
  describeError,
  EXIT,
  ExitRequest,
  errorJson,
  isConnectionFailure,
  UsageError,
} from "./exit-codes.js";
import { buildProgram } from "./program.js";

function wantsJson(argv: readonly string[]): boolean {
  return argv.includes("--json");
}

/** Runs the CLI and returns the exit code (documented in exit-codes.ts). */
export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: "user" });
    return EXIT.ok;
  } catch (err) {
    if (err instanceof ExitRequest) return err.exitCode;
    if (err instanceof CommanderError) {
      // Help and version end through the same exception (exit code 0); commander has already printed them or
      // the error. Help shown because a command was incomplete (`vdisk volume`) is a usage error.
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    const json = wantsJson(argv);
    if (err instanceof UsageError) {
      process.stderr.write(`vdisk: ${err.message}\n`);
      return EXIT.usage;
    }
    if (json) process.stdout.write(`${JSON.stringify(errorJson(err))}\n`);
    if (isConnectionFailure(err)) {
      process.stderr.write(`vdisk: cannot reach the server: ${describeError(err)}\n`);
      return EXIT.connection;
    }
    process.stderr.write(`vdisk: error: ${describeError(err)}\n`);
    return EXIT.failed;
  }
}

process.exitCode = await main(process.argv.slice(2));
// Lingering handles (an HTTP/2 session closing, a stdin listener) must not keep a finished command alive.
process.exit();
