export * from "./errors.js";
export type * from "./types.js";
export type * from "./block-image.js";
export type * from "./host/host-file.js";
