import type { VdiskClient } from "@vdisk/sdk";
import { type Command, InvalidArgumentError } from "commander";
import { clientFor, type GlobalOptions } from "../connect.js";
import { consoleOutput, type Output } from "../output.js";
import { parseSize } from "../sizes.js";

/** What a client command gets: a connected client, where to print, and whether a person is watching. */
export interface CommandContext {
  client: VdiskClient;
  output: Output;
  /** stdin and stdout are terminals and `--json` is off: draw progress bars and ask on Ctrl-C. */
  interactive: boolean;
}

/** Runs a command body with a client built from the global options; the client is always closed. */
export async function withClient(
  command: Command,
  body: (ctx: CommandContext) => Promise<void>,
): Promise<void> {
  const globals = command.optsWithGlobals<GlobalOptions>();
  const output = consoleOutput(globals.json === true);
  const interactive = !output.json && process.stdout.isTTY === true && process.stdin.isTTY === true;
  const client = clientFor(globals);
  try {
    await body({ client, output, interactive });
  } finally {
    client.close();
  }
}

/** Commander argument parser for sizes (`10G`, `512M`, `1TiB`, `4096`). */
export function sizeArg(value: string): number {
  try {
    return parseSize(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** Commander parser for repeatable `--label k=v`. */
export function labelArg(
  value: string,
  previous: Record<string, string> | undefined,
): Record<string, string> {
  const at = value.indexOf("=");
  if (at <= 0) throw new InvalidArgumentError(`"${value}" is not a label; expected KEY=VALUE`);
  return { ...previous, [value.slice(0, at)]: value.slice(at + 1) };
}
