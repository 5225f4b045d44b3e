export { rawDriver } from "./raw-driver.js";
export { RAW_LIMITS } from "./raw-image.js";
