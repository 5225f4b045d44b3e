/** The core layer: the only entry points servers and jobs use to reach an image. */

export type { AllocationSummary, MapOptions } from "./allocation-map.js";
export { addToSummary, allocationSummary, mapExtents } from "./allocation-map.js";
export type { ChainStatus } from "./block-status-above.js";
export { blockStatusAbove, layersAbove, MAX_CHAIN_DEPTH } from "./block-status-above.js";
export { ExtentBuilder, extentsMergeable } from "./extent-builder.js";
export type { WriteOptions } from "./io.js";
export {
  discardAt,
  flushImage,
  MAX_READ_ALLOCATION,
  readAt,
  truncateImage,
  writeAt,
  writeZeroesAt,
} from "./io.js";
export { isAllZero } from "./zero-buffer.js";
