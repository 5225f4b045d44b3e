import { ConfigError, loadConfig, USAGE } from "./config.js";
import { createLogger } from "./log.js";
import { startServer } from "./server.js";

// Composition only: config → logger → server (catalog, reconcile, engine, services) → signals.
async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig(process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`vdisk-server: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  if (config === null) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const log = createLogger(config.logLevel);
  const server = await startServer({ config, log });

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, "second signal: exiting now");
      process.exit(130);
    }
    log.info({ signal }, "shutting down");
    const exit = (code: number) => log.flush(() => process.exit(code));
    server.close().then(
      () => exit(0),
      (err: unknown) => {
        log.error({ err }, "shutdown failed");
        exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `vdisk-server: failed to start: ${err instanceof Error ? err.message : String(err)}\n`,
  );
  process.exit(1);
});
