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
  createVdiskClient,
  VdiskClient,
  type VdiskClientOptions,
  type CallOptions,
  type MutationOptions,
  type JobCallOptions,
  type CreateVolumeSpec,
  type Qcow2CreateOptions,
  type VmdkCreateOptions,
  type ResizeOptions,
  type CloneOptions,
  type CheckOptions,
  type AllocateRangeOptions,
  type FlattenOptions,
  type ListVolumesOptions,
  type ListJobsOptions,
  type AllocationMapOptions,
  type ReadOptions,
  type WriteOptions,
  type ImportSpec,
  type ExportOptions,
  type RawClients,
} from "./client.js";
export { VdiskError, type VdiskErrorCode, type VdiskErrorInit } from "./errors.js";
export { JobHandle } from "./job-handle.js";
export { AllocationMapStream, type AllocationMap } from "./streams.js";
export type { ExportHeaderPiece, ExportPiece, UploadOptions, DownloadOptions, DownloadResult } from "./files.js";
export type { RetryPolicy } from "./retry.js";
export type { TlsOptions, TokenSource } from "./transport.js";
export { KiB, MiB, GiB, TiB } from "./sizes.js";
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
