import { Command, Option } from "commander";
import { addAllocationCommands } from "./commands/allocation.js";
import { addFileCommands } from "./commands/files.js";
import { addJobCommands } from "./commands/job.js";
import { addServeCommand } from "./commands/serve.js";
import { addVolumeCommands } from "./commands/volume.js";
import { DEFAULT_SERVER } from "./connect.js";
import { EXIT_CODES_HELP } from "./exit-codes.js";

/** The `vdisk` command tree. Commander errors are thrown (exitOverride), so main decides the exit code. */
export function buildProgram(): Command {
  const program = new Command("vdisk");
  program
    .description("Manage vdisk volumes (raw, qcow2, vmdk) on a vdisk server, or run one (vdisk serve).")
    .version("0.1.0")
    .exitOverride()
    .showHelpAfterError("(run with --help for usage)")
    .addOption(
      new Option("--server <host:port>", "server address").env("VDISK_SERVER").default(DEFAULT_SERVER),
    )
    .addOption(
      new Option("--tls-ca <file>", "CA certificate (PEM) to trust; turns on TLS").env("VDISK_TLS_CA"),
    )
    .addOption(
      new Option("--tls-cert <file>", "client certificate (PEM) for mutual TLS").env("VDISK_TLS_CERT"),
    )
    .addOption(new Option("--tls-key <file>", "client private key (PEM) for mutual TLS").env("VDISK_TLS_KEY"))
    .addOption(new Option("--token <token>", "bearer token").env("VDISK_TOKEN"))
    .option("--json", "print machine-readable JSON (one document per command; job watch: JSON lines)")
    .addHelpText(
      "after",
      `\nSizes take binary units: 4096, 512M, 10G, 1TiB (K, KB, KiB all mean 1024).\n` +
        `Long operations draw a progress bar on a terminal; Ctrl-C asks whether to cancel the job or detach.\n` +
        `Without a terminal, SIGINT detaches (the job keeps running; exit 130).\n\n${EXIT_CODES_HELP}`,
    );
  addServeCommand(program);
  addVolumeCommands(program);
  addAllocationCommands(program);
  addFileCommands(program);
  addJobCommands(program);
  return program;
}
