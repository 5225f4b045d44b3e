import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { expectEngineError, makeScratch, ok, patchedCopy } from "./io-test-support.js";
import { inspectInSandbox } from "./sandbox.js";

const scratch = makeScratch("sandbox");
afterAll(() => scratch.remove());
const p = (name: string) => scratch.path(name);
const QUOTA = { maxVirtualSize: 1024 ** 4 };

beforeAll(() => {
  ok("qemu-img", ["create", "-f", "qcow2", p("good.qcow2"), "8M"]);
  ok("qemu-io", ["-f", "qcow2", "-c", "write -P 7 0 64k", p("good.qcow2")]);
  ok("qemu-img", ["create", "-f", "qcow2", p("base.qcow2"), "8M"]);
  ok("qemu-img", ["create", "-f", "qcow2", "-b", p("base.qcow2"), "-F", "qcow2", p("overlay.qcow2")]);
  // If the worker opened the backing file it would block on this FIFO until the timeout.
  rmSync(p("base.qcow2"));
  execFileSync("mkfifo", [p("base.qcow2")]);
  ok("qemu-img", ["create", "-f", "vmdk", "-o", "subformat=monolithicFlat", p("flat.vmdk"), "8M"]);
  patchedCopy(p("good.qcow2"), p("petabyte.qcow2"), (b) => b.writeBigUInt64BE(1n << 50n, 24));
});

// Each case starts a worker (tsx loader + engine modules): about a second on a busy machine.
describe("inspectInSandbox", () => {
  test("returns the verdict for a valid image", async () => {
    const inspection = await inspectInSandbox(p("good.qcow2"), "qcow2", QUOTA);
    expect(inspection).toMatchObject({ format: "qcow2", virtualSize: 8 * 1024 * 1024 });
    expect(inspection.details.qcow2).toMatchObject({ version: 3 });
  });

  test("rethrows the typed rejection (code, reason, message) across the worker boundary", async () => {
    const err = await expectEngineError(
      inspectInSandbox(p("overlay.qcow2"), "qcow2", QUOTA, { timeoutMs: 20_000 }),
      "INVALID_ARGUMENT",
      "QCOW2_BACKING_FILE",
    );
    expect(err.message).toContain("backing file");
    await expectEngineError(
      inspectInSandbox(p("flat.vmdk"), "raw", QUOTA),
      "INVALID_ARGUMENT",
      "IMPORT_FORMAT_MISMATCH",
    );
    const quota = await expectEngineError(
      inspectInSandbox(p("petabyte.qcow2"), "qcow2", QUOTA),
      "NO_SPACE",
      "VIRTUAL_SIZE_OVER_QUOTA",
    );
    expect(quota.metadata).toMatchObject({ virtualSize: String(2 ** 50) });
  });

  test("a missing file is NOT_FOUND, not a verdict on content", async () => {
    await expectEngineError(inspectInSandbox(p("nope.qcow2"), "qcow2", QUOTA), "NOT_FOUND", "HOST_ENOENT");
  });

  test("running out of time is IMPORT_INSPECTION_LIMIT, and the worker is stopped", async () => {
    const started = performance.now();
    await expectEngineError(
      inspectInSandbox(p("good.qcow2"), "qcow2", QUOTA, { timeoutMs: 5 }),
      "INVALID_ARGUMENT",
      "IMPORT_INSPECTION_LIMIT",
    );
    expect(performance.now() - started).toBeLessThan(2000);
  });

  test("running out of heap is IMPORT_INSPECTION_LIMIT", async () => {
    const err = await expectEngineError(
      inspectInSandbox(p("good.qcow2"), "qcow2", QUOTA, { maxMemoryMb: 1 }),
      "INVALID_ARGUMENT",
      "IMPORT_INSPECTION_LIMIT",
    );
    expect(err.metadata).toEqual({ limit: "memory" });
  });

  test("an aborted signal cancels", async () => {
    const controller = new AbortController();
    const pending = inspectInSandbox(p("good.qcow2"), "qcow2", QUOTA, { signal: controller.signal });
    controller.abort();
    await expectEngineError(pending, "CANCELLED", "CANCELLED");
  });
});
