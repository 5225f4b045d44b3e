import type { Command } from "commander";
import { UsageError } from "../exit-codes.js";

// Flags given on the command line are handed to the server's own config loader, which also reads the
// VDISK_* environment variables and applies the defaults: `vdisk serve` and the server's main agree.
const PASSED: [attribute: string, flag: string][] = [
  ["listen", "--listen"],
  ["pool", "--pool"],
  ["maxCapacity", "--max-capacity"],
  ["logLevel", "--log-level"],
  ["maxJobs", "--max-jobs"],
];

export function addServeCommand(program: Command): void {
  program
    .command("serve")
    .description("run a vdisk server in this process (same flags and VDISK_* variables as the server's main)")
    .option("--listen <host:port>", "address to serve gRPC on (VDISK_LISTEN, default 127.0.0.1:50051)")
    .option("--pool <dir>", "pool directory holding the volumes (VDISK_POOL, default ./data)")
    .option(
      "--max-capacity <size>",
      "largest volume capacity, e.g. 10G, 1TiB (VDISK_MAX_CAPACITY, default 256TiB)",
    )
    .option("--log-level <level>", "fatal|error|warn|info|debug|trace|silent (VDISK_LOG_LEVEL, default info)")
    .option("--no-reflection", "do not serve gRPC server reflection (VDISK_REFLECTION=0)")
    .option("--max-jobs <n>", "jobs running at once (VDISK_MAX_JOBS, default 4)")
    .action(async (opts: Record<string, unknown>, cmd: Command) => {
      const argv: string[] = [];
      for (const [attribute, flag] of PASSED) {
        if (cmd.getOptionValueSource(attribute) === "cli") argv.push(flag, String(opts[attribute]));
      }
      if (cmd.getOptionValueSource("reflection") === "cli" && opts.reflection === false)
        argv.push("--no-reflection");
      // Loaded only here: the server (engine, SQLite, grpc-js) would slow every client command's start.
      const { createLogger, loadConfig, startServer } = await import("@vdisk/server");
      let config: ReturnType<typeof loadConfig>;
      try {
        config = loadConfig(argv);
      } catch (err) {
        // The server's ConfigError: a bad flag or variable value is a usage error.
        if (err instanceof Error && err.name === "ConfigError")
          throw new UsageError(err.message.split("\n")[0] as string);
        throw err;
      }
      if (config === null) return;
      const log = createLogger(config.logLevel);
      const server = await startServer({ config, log });
      await new Promise<void>((resolve, reject) => {
        let signals = 0;
        const onSignal = (signal: NodeJS.Signals) => {
          if (++signals > 1) {
            log.warn({ signal }, "second signal: exiting now");
            process.exit(130);
          }
          log.info({ signal }, "shutting down");
          server.close().then(resolve, reject);
        };
        process.on("SIGINT", onSignal);
        process.on("SIGTERM", onSignal);
      });
    });
}
