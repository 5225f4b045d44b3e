import { type Logger, pino } from "pino";
import type { LogLevel } from "./config.js";

export type { Logger };

/**
 * JSON lines for machines; pretty output only when a person is watching a terminal. The pretty printer
 * runs in a worker thread (pino transport) so formatting never blocks the event loop serving I/O.
 */
export function createLogger(level: LogLevel, options: { pretty?: boolean } = {}): Logger {
  const pretty = options.pretty ?? process.stdout.isTTY === true;
  return pino({
    level,
    base: { service: "vdisk" },
    timestamp: pino.stdTimeFunctions.isoTime,
    ...(pretty
      ? { transport: { target: "pino-pretty", options: { colorize: true, translateTime: "SYS:HH:MM:ss.l" } } }
      : {}),
  });
}
