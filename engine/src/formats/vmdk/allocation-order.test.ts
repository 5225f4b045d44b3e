import { afterAll, expect, test } from "vitest";
import type { HostFile } from "../../host/host-file.js";
import { vmdkDriver } from "./index.js";
import { makeScratchDir, openFile, pattern, qemuImg } from "./vmdk-test-helpers.js";

const scratch = makeScratchDir();
afterAll(() => scratch.remove());

/** Passes every call through to the real file and records the ones this test cares about. */
function recording(file: HostFile, log: string[]): HostFile {
  return new Proxy(file, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if (prop === "write") log.push(`write ${args[0]} ${(args[1] as Uint8Array).length}`);
        else if (prop === "writev") {
          const total = (args[1] as Uint8Array[]).reduce((sum, b) => sum + b.length, 0);
          log.push(`writev ${args[0]} ${total}`);
        } else if (prop === "size" || prop === "truncate" || prop === "allocate") log.push(String(prop));
        return value.apply(target, args);
      };
    },
  });
}

test("grains are written before their table entries, tables batched, and the file never re-measured", async () => {
  const path = scratch.path("order.vmdk");
  const raw = await openFile(path, "create");
  await vmdkDriver.create(raw, { size: 64 << 20, prealloc: "off" });
  const log: string[] = [];
  const image = await vmdkDriver.open(recording(raw, log), { readOnly: false });
  expect(log).toEqual(["size"]); // measured once, at open
  log.length = 0;

  // First write: the descriptor gets a new CID; 3 new grains (one partial) go out in one writev at the
  // grain-aligned end of the file, then one write per grain-table copy covering all three entries.
  await image.write(65536 + 100, pattern(3 * 65536 - 200, 1));
  // QEMU's layout for 64 MiB (two 4-sector GTs): RGD at 21, its GTs at 22; GD at 30, its GTs at 31.
  const gt = 31 * 512;
  const rgt = 22 * 512;
  expect(log).toEqual([
    `write 512 ${20 * 512}`,
    `writev ${128 * 512} ${3 * 65536}`,
    `write ${gt + 4} 12`,
    `write ${rgt + 4} 12`,
  ]);
  log.length = 0;

  // Overwriting allocated grains touches only the data; the next allocation continues after the last grain.
  await image.write(65536, pattern(65536, 2));
  await image.write(10 * 65536, pattern(512, 3));
  expect(log).toEqual([
    `write ${128 * 512} 65536`,
    `writev ${128 * 512 + 3 * 65536} 65536`,
    `write ${gt + 40} 4`,
    `write ${rgt + 40} 4`,
  ]);
  await image.close();
  expect(qemuImg(["check", "-f", "vmdk", path]).code).toBe(0);
});
