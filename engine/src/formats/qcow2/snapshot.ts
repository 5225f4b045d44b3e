import { readU16, readU32, readU64 } from "../../binary/big-endian.js";
import { corrupt } from "./errors.js";
import { MAX_L1_BYTES } from "./header.js";

export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
export const MAX_SNAPSHOT_TABLE_BYTES = 1024 * 65536;

/** The parts of an internal snapshot the driver needs: its L1 table (for refcounting and checks). */
export interface SnapshotEntry {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
}

/**
 * Reads `count` snapshot table entries from `table` (the bytes at snapshots_offset, at most
 * MAX_SNAPSHOT_TABLE_BYTES). Entries are validated as QEMU's qcow2_do_read_snapshots does; the table
 * itself is never rewritten by this driver, so it stays byte-exact.
 */
export function parseSnapshotTable(
  table: Uint8Array,
  count: number,
  version: 2 | 3,
  clusterSize: number,
  fileSize: number,
): { entries: SnapshotEntry[]; tableBytes: number } {
  const entries: SnapshotEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 40 > table.length)
      throw corrupt("QCOW2_SNAPSHOT_TABLE_TOO_BIG", "snapshot table is too big or truncated");
    const l1High = readU64(table, at);
    const l1Size = readU32(table, at + 8);
    const idSize = readU16(table, at + 12);
    const nameSize = readU16(table, at + 14);
    const extraSize = readU32(table, at + 36);
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA)
      throw corrupt("QCOW2_SNAPSHOT_EXTRA_DATA", "too much extra metadata in snapshot");
    if (version === 3 && extraSize < 16)
      throw corrupt("QCOW2_SNAPSHOT_EXTRA_DATA", "snapshot extra data too short for v3");
    const end = at + 40 + extraSize + idSize + nameSize;
    if (end > table.length)
      throw corrupt("QCOW2_SNAPSHOT_TABLE_TOO_BIG", "snapshot table is too big or truncated");
    if (l1High > BigInt(Number.MAX_SAFE_INTEGER))
      throw corrupt("QCOW2_SNAPSHOT_L1_INVALID", "snapshot L1 offset out of range");
    const l1TableOffset = Number(l1High);
    if (l1Size > MAX_L1_BYTES / 8) throw corrupt("QCOW2_SNAPSHOT_L1_INVALID", "snapshot L1 table too large");
    if (l1TableOffset % clusterSize !== 0 || (l1Size > 0 && l1TableOffset + l1Size * 8 > fileSize)) {
      throw corrupt("QCOW2_SNAPSHOT_L1_INVALID", "snapshot L1 table offset invalid");
    }
    const idAt = at + 40 + extraSize;
    const id = Buffer.from(table.subarray(idAt, idAt + idSize)).toString("utf8");
    const name = Buffer.from(table.subarray(idAt + idSize, end)).toString("utf8");
    entries.push({ l1TableOffset, l1Size, id, name });
    at = Math.ceil(end / 8) * 8;
  }
  return { entries, tableBytes: at };
}
