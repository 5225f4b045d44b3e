import { EngineError } from "../errors.js";
import type { HostCapabilities, HostFile } from "../host/host-file.js";

function readOnly(): Promise<never> {
  return Promise.reject(
    new EngineError("READ_ONLY", "the upload being inspected is read-only", {
      reason: "INSPECTION_READ_ONLY",
    }),
  );
}

/**
 * The inspector's window onto the caller's file: reads only, and closing it leaves the file open (the
 * caller still owns it — it is about to rename or delete it). Even if the caller opened the staging file
 * read-write, nothing the inspector runs (drivers included) can change a byte of it or take its locks.
 */
export function readOnlyView(file: HostFile): HostFile {
  const capabilities: HostCapabilities = {
    ...file.capabilities,
    allocate: false,
    punchHole: false,
    zeroRange: false,
  };
  return {
    readOnly: true,
    capabilities,
    size: () => file.size(),
    allocatedBytes: () => file.allocatedBytes(),
    read: (offset, into, opts) => file.read(offset, into, opts),
    readFull: (offset, into, opts) => file.readFull(offset, into, opts),
    seekData: (offset) => file.seekData(offset),
    seekHole: (offset) => file.seekHole(offset),
    write: readOnly,
    writev: readOnly,
    truncate: readOnly,
    allocate: readOnly,
    punchHole: readOnly,
    zeroRange: readOnly,
    // Nothing is ever written through the view, so there is nothing to sync.
    flush: async () => undefined,
    // Locks belong to the caller's open file description; the inspector neither takes nor drops them.
    lockImage: async () => undefined,
    unlockImage: async () => undefined,
    close: async () => undefined,
  };
}
