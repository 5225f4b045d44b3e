import type { Extent } from "@vdisk/sdk";
import { describe, expect, it } from "vitest";
import { writeQemuMap } from "./qemu-map.js";

async function* from(extents: Extent[]): AsyncGenerator<Extent> {
  yield* extents;
}

const base = { data: false, zero: true, present: true, depth: 0, compressed: false };

async function render(extents: Extent[]): Promise<string> {
  let text = "";
  await writeQemuMap(from(extents), (t) => {
    text += t;
  });
  return text;
}

describe("writeQemuMap", () => {
  it("prints qemu-img 7.2's exact text: key order, spacing, offset only when mapped, no compressed", async () => {
    const text = await render([
      { ...base, offset: 0, length: 524288, hostOffset: 0 },
      { ...base, offset: 524288, length: 131072, data: true, zero: false, hostOffset: 524288 },
      { ...base, offset: 655360, length: 4096, present: false, depth: 1 },
    ]);
    expect(text).toBe(
      '[{ "start": 0, "length": 524288, "depth": 0, "present": true, "zero": true, "data": false, "offset": 0},\n' +
        '{ "start": 524288, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true, "offset": 524288},\n' +
        '{ "start": 655360, "length": 4096, "depth": 1, "present": false, "zero": true, "data": false}]\n',
    );
    expect(JSON.parse(text)).toHaveLength(3);
  });

  it("prints an empty map as qemu-img does", async () => {
    expect(await render([])).toBe("[]\n");
  });
});
