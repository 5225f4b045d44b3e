/** @vdisk/engine — the format engine. Servers and jobs use the core API and drivers exported here. */
export * from "./errors.js";
export type * from "./types.js";
export type * from "./block-image.js";
export * from "./host/index.js";
export * from "./core/index.js";
export * from "./ops/index.js";
export { RAW_LIMITS, rawDriver } from "./formats/raw/index.js";
export { driverFor } from "./formats/registry.js";
export { createStreamOptimizedWriter, inspectVmdk, vmdkDriver, writeStreamOptimized } from "./formats/vmdk/index.js";
export { qcow2Driver } from "./formats/qcow2/index.js";
export * from "./inspect/index.js";
export * from "./export/index.js";
