/**
 * @vdisk/sdk — a typed client for the vdisk volume service.
 *
 * ```ts
 * import { createVdiskClient, TiB, MiB } from "@vdisk/sdk";
 * const vdisk = createVdiskClient({ baseUrl: "http://127.0.0.1:7420" });
 * const create = vdisk.createVolume({ name: "disk1", format: "raw", capacityBytes: TiB });
 * for await (const progress of create) console.log(progress.state, progress.doneBytes);
 * const volume = await create.result;
 * ```
 * @packageDocumentation
 */
export {
  type AllocateRangeOptions,
  type AllocationMapOptions,
  type CallOptions,
  type CheckOptions,
  type CloneOptions,
  type CreateVolumeSpec,
  createVdiskClient,
  type ExportOptions,
  type FlattenOptions,
  type ImportSpec,
  type JobCallOptions,
  type ListJobsOptions,
  type ListVolumesOptions,
  type MutationOptions,
  type Qcow2CreateOptions,
  type RawClients,
  type ReadOptions,
  type ResizeOptions,
  VdiskClient,
  type VdiskClientOptions,
  type VmdkCreateOptions,
  type WriteOptions,
} from "./client.js";
export type {
  AllocateModeName,
  CloneModeName,
  JobKindName,
  JobStateName,
  PreallocationName,
  Qcow2CompatName,
  RepairModeName,
  VmdkSubformatName,
  VolumeFormatName,
  VolumeStateName,
  ZeroDetectionName,
} from "./enums.js";
export { VdiskError, type VdiskErrorCode, type VdiskErrorInit } from "./errors.js";
export type {
  DownloadOptions,
  DownloadResult,
  ExportHeaderPiece,
  ExportPiece,
  UploadOptions,
} from "./files.js";
export { JobHandle } from "./job-handle.js";
export type { RetryPolicy } from "./retry.js";
export { GiB, KiB, MiB, TiB } from "./sizes.js";
export { type AllocationMap, AllocationMapStream } from "./streams.js";
export type { TlsOptions, TokenSource } from "./transport.js";
export type {
  AllocateResult,
  AllocateSummary,
  AllocationSummary,
  CheckReport,
  DataPiece,
  Extent,
  FlushPiece,
  Job,
  JobProgress,
  JobResult,
  JobSnapshot,
  Page,
  Qcow2Info,
  ReadPiece,
  VmdkInfo,
  Volume,
  WritePiece,
  WriteResult,
  ZeroPiece,
} from "./types.js";
