/** The core layer: the only entry points servers and jobs use to reach an image. */
export { readAt, writeAt, writeZeroesAt, discardAt, flushImage, truncateImage, MAX_READ_ALLOCATION } from "./io.js";
export type { WriteOptions } from "./io.js";
export { blockStatusAbove, layersAbove, MAX_CHAIN_DEPTH } from "./block-status-above.js";
export type { ChainStatus } from "./block-status-above.js";
export { mapExtents, allocationSummary, addToSummary } from "./allocation-map.js";
export type { MapOptions, AllocationSummary } from "./allocation-map.js";
export { ExtentBuilder, extentsMergeable } from "./extent-builder.js";
export { isAllZero } from "./zero-buffer.js";
