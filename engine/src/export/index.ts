/**
 * Export producers (ExportVolume): each is an async generator of file pieces — `{offset, data}` and
 * `{offset, length, zero: true}` — in ascending, contiguous order, produced in a single pass with
 * bounded memory, so a server can forward them to a network stream as they come (zero pieces as
 * sparse runs). Every producer takes an AbortSignal and an optional progress callback.
 */

export {
  DEFAULT_CHUNK_SIZE,
  type ExportDataPiece,
  type ExportOptions,
  type ExportPiece,
  type ExportZeroPiece,
} from "./pieces.js";
export { exportQcow2, type Qcow2ExportOptions } from "./qcow2-export.js";
export { exportRaw } from "./raw-export.js";
export { exportVmdk, type VmdkExportOptions } from "./vmdk-export.js";
