/** @vdisk/cli: the `vdisk` command. Its pure helpers are exported for reuse and tests. */
export { EXIT, EXIT_CODES_HELP } from "./exit-codes.js";
export { type QemuMapEntry, toQemuMapEntry, writeQemuMap } from "./qemu-map.js";
export { formatSize, parseSize } from "./sizes.js";
