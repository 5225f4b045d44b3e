import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EngineError } from "../errors.js";
import { withFaults } from "./faulty-file.js";
import { createMemoryFile } from "./memory-file.js";
import { openHostFile } from "./node-file.js";

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "vdisk-faulty-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(EngineError);
    return (err as EngineError).code;
  }
  throw new Error("the call should have failed");
}

describe("withFaults over the real file", () => {
  it("fails the nth write of a named point before it reaches the disk, once", async () => {
    const inner = await openHostFile(join(dir, "a.img"), { readOnly: false, create: "new" });
    const file = withFaults(inner);
    file.injectFault({ op: "write", point: "l2_update", nth: 2, error: "ENOSPC" });
    await file.write(0, new Uint8Array(512).fill(1), { point: "l2_update" });
    await file.write(512, new Uint8Array(512).fill(9), { point: "data_write" }); // another point: not counted
    expect(
      await codeOf(file.write(1024, new Uint8Array(512).fill(2), { point: "l2_update.coalesced" })),
    ).toBe("NO_SPACE");
    await file.write(1536, new Uint8Array(512).fill(3), { point: "l2_update" }); // once: disarmed
    await file.flush();
    await file.close();
    const bytes = await readFile(join(dir, "a.img"));
    expect(bytes.length).toBe(2048);
    expect([bytes[0], bytes[512], bytes[1024], bytes[1536]]).toEqual([1, 9, 0, 3]);
    expect(file.faultsFired).toBe(1);
    expect(file.points).toEqual({ l2_update: 2, "l2_update.coalesced": 1, data_write: 1, flush: 1 });
  });

  it("keeps failing a persistent fault until it is cleared", async () => {
    const file = withFaults(await openHostFile(join(dir, "b.img"), { readOnly: false, create: "new" }));
    file.injectFault({ op: "any", nth: 2, error: "EIO", persistent: true });
    await file.write(0, new Uint8Array(16));
    expect(await codeOf(file.write(0, new Uint8Array(16)))).toBe("IO");
    expect(await codeOf(file.readFull(0, new Uint8Array(16)))).toBe("IO");
    expect(await codeOf(file.truncate(4096))).toBe("IO");
    file.clearFaults();
    await file.truncate(4096);
    expect(await file.size()).toBe(4096);
    expect(file.faultsFired).toBe(3);
    await file.close();
  });

  it("makes an injected fsync failure permanent, like a real one, even after the fault is cleared", async () => {
    const file = withFaults(await openHostFile(join(dir, "c.img"), { readOnly: false, create: "new" }));
    file.injectFault({ op: "flush", error: "EIO" });
    expect(await codeOf(file.write(0, new Uint8Array(8), { fua: true, point: "header_update" }))).toBe(
      "FSYNC_FAILED",
    );
    file.clearFaults();
    expect(await codeOf(file.flush())).toBe("FSYNC_FAILED");
    expect(await codeOf(file.write(0, new Uint8Array(8)))).toBe("FSYNC_FAILED");
    expect(file.points["header_update.fua"]).toBe(1);
    await file.close();
  });
});

describe("withFaults and the memory file share one fault plan", () => {
  it("fires the same faults for the same spec and call sequence", async () => {
    const direct = createMemoryFile();
    const wrapped = withFaults(createMemoryFile());
    const spec = { op: "write", point: "refblock_alloc", nth: 2, error: "ENOSPC", persistent: true } as const;
    direct.injectFault(spec);
    wrapped.injectFault(spec);
    const outcomes = async (f: typeof direct | typeof wrapped) => {
      const seen: string[] = [];
      for (const point of [
        "refblock_alloc",
        "l2_update",
        "refblock_alloc.write",
        "refblock_alloc",
        "flush",
      ]) {
        const call = point === "flush" ? f.flush() : f.write(0, new Uint8Array(4), { point });
        seen.push(
          await call.then(
            () => "ok",
            (err: EngineError) => err.code,
          ),
        );
      }
      return seen;
    };
    const expected = ["ok", "ok", "NO_SPACE", "NO_SPACE", "ok"];
    expect(await outcomes(direct)).toEqual(expected);
    expect(await outcomes(wrapped)).toEqual(expected);
    expect(direct.stats.faultsFired).toBe(2);
    expect(wrapped.faultsFired).toBe(2);
  });
});
