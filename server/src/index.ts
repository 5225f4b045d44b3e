/** @vdisk/server: run a vdisk gRPC server in-process (tests, embedding) or via main.ts. */

export { loadConfig, type ServerConfig } from "./config.js";
export { createLogger } from "./log.js";
export {
  defaultEngine,
  GRPC_OPTIONS,
  type RunningServer,
  SERVICE_NAMES,
  type StartServerOptions,
  startServer,
} from "./server.js";
