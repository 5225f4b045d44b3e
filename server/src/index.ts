/** @vdisk/server: run a vdisk gRPC server in-process (tests, embedding) or via main.ts. */
export { startServer, defaultEngine, GRPC_OPTIONS, SERVICE_NAMES, type RunningServer, type StartServerOptions } from "./server.js";
export { loadConfig, type ServerConfig } from "./config.js";
export { createLogger } from "./log.js";
