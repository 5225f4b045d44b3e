/**
 * @vdisk/engine/testing — what other packages' tests need to drive the engine into its error paths:
 * fault injection on any HostFile (reliability.md T4) and the in-memory file that shares its fault plan.
 */

export {
  type FaultOp,
  FaultPlan,
  type FaultSpec,
  type InjectedErrno,
  pointMatches,
} from "../host/fault-plan.js";
export { type FaultyFile, withFaults } from "../host/faulty-file.js";
export {
  createMemoryFile,
  type MemoryFile,
  type MemoryFileOptions,
  type MemoryFileStats,
} from "../host/memory-file.js";
export { makeWorkload, type Op, opData, SectorOracle, type WorkloadShape } from "./workload.js";
