import type { Extent } from "@vdisk/sdk";

/**
 * One entry as `qemu-img map --output=json` (QEMU 7.2) prints it: these keys in this order, `offset` only
 * when the run maps linearly to the host file. 7.2 prints no `compressed` key (later QEMUs do), so it is
 * left out here too, keeping `JSON.parse` of both outputs deep-equal.
 */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export function toQemuMapEntry(extent: Extent): QemuMapEntry {
  const entry: QemuMapEntry = {
    start: extent.offset,
    length: extent.length,
    depth: extent.depth,
    present: extent.present,
    zero: extent.zero,
    data: extent.data,
  };
  if (extent.hostOffset !== undefined) entry.offset = extent.hostOffset;
  return entry;
}

/** One entry's text, spaced exactly as qemu-img 7.2's dump_map_entry prints it. */
function entryText(e: QemuMapEntry): string {
  const offset = e.offset === undefined ? "" : `, "offset": ${e.offset}`;
  return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${offset}}`;
}

/**
 * Streams the map in qemu-img's layout (`[` + entries joined by `,\n` + `]\n`), one write per entry, so a
 * map of millions of extents never has to be held in memory.
 */
export async function writeQemuMap(
  extents: AsyncIterable<Extent>,
  write: (text: string) => void,
): Promise<void> {
  write("[");
  let first = true;
  for await (const extent of extents) {
    write(`${first ? "" : ",\n"}${entryText(toQemuMapEntry(extent))}`);
    first = false;
  }
  write("]\n");
}
