export type { FaultOp, FaultSpec, InjectedErrno } from "./fault-plan.js";
export type { HostCapabilities, HostFile, LockMode } from "./host-file.js";
export {
  createMemoryFile,
  type MemoryFile,
  type MemoryFileOptions,
  type MemoryFileStats,
} from "./memory-file.js";
export { BULK_FILL_WRITE_BEHIND_BYTES, type OpenHostFileOptions, openHostFile } from "./node-file.js";
