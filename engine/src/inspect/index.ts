/**
 * Upload inspection (ImportVolume): decides whether an uploaded staging file may be stored as the
 * declared format. inspectImage runs in-process on a HostFile; inspectInSandbox runs it in a
 * resource-limited worker thread on a path, which is what the server should use for untrusted bytes.
 */
export { type Inspection, type InspectLimits, type InspectOptions, inspectImage } from "./inspect-image.js";
export { inspectInSandbox, type SandboxOptions } from "./sandbox.js";
export { detectSignatures, type Signature } from "./signatures.js";
