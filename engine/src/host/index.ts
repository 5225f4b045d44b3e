export type { HostCapabilities, HostFile, LockMode } from "./host-file.js";
export {
  createMemoryFile,
  type FaultOp,
  type FaultSpec,
  type MemoryFile,
  type MemoryFileOptions,
  type MemoryFileStats,
} from "./memory-file.js";
export { type OpenHostFileOptions, openHostFile } from "./node-file.js";
