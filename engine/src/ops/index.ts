/** Whole-image operations built on the core: the work behind clone, allocate and flatten jobs. */
export { type AllocateMode, type AllocateOptions, type AllocateResult, allocateRange, flattenImage } from "./allocate.js";
export { type CopyOptions, type CopyResult, copyImage } from "./copy.js";
