export type { HostCapabilities, HostFile, LockMode } from "./host-file.js";
export { type OpenHostFileOptions, openHostFile } from "./node-file.js";
