import type { FormatName } from "../types.js";
import { rejectUpload } from "./errors.js";
import type { Signature } from "./signatures.js";

/**
 * The format the content says it is, which must equal the declared one (reliability rule 1: never
 * switch parser on content). Polyglots are refused outright: a container format together with any
 * other signature (a second container, or an ISO/partition table that another reader would honour)
 * means two programs would see two different disks in the same bytes. Raw-compatible signatures alone
 * (a hybrid ISO carries both ISO 9660 and an MBR) are just a raw disk.
 */
export function checkIdentity(declared: FormatName, signatures: readonly Signature[]): void {
  const containers = signatures.filter((s) => s.container !== undefined);
  if (containers.length > 1 || (containers.length === 1 && signatures.length > 1)) {
    const names = signatures.map((s) => s.name).join(" + ");
    throw rejectUpload("IMPORT_POLYGLOT", `content matches several formats at once (${names})`, {
      declared,
      detected: names,
    });
  }
  const container = containers[0];
  const detected = container === undefined ? "raw" : container.container;
  if (detected !== declared) {
    const what = container === undefined ? "raw data" : container.name;
    throw rejectUpload("IMPORT_FORMAT_MISMATCH", `declared ${declared}, but the content is ${what}`, {
      declared,
      detected: container?.name ?? "raw",
    });
  }
}
