export * from "./errors.js";
export type * from "./types.js";
export type * from "./block-image.js";
export type * from "./host/host-file.js";
export * from "./core/index.js";
export { openHostFile, type OpenHostFileOptions } from "./host/node-file.js";
export { rawDriver, RAW_LIMITS } from "./formats/raw/index.js";
