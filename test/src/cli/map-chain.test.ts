import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { MiB } from "@vdisk/sdk";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startTestServer, type TestServer } from "./harness.js";

/**
 * Issue 6: `vdisk map NAME --json` and `qemu-img map --output=json POOL/NAME.qcow2` print equal JSON for a
 * three-layer chain with data, zero clusters and holes at several depths.
 */
const exec = promisify(execFile);
let t: TestServer;

beforeAll(async () => {
  t = await startTestServer("map-chain");
  const fill = (n: number, b: number) => new Uint8Array(n).fill(b);
  await t.client.createVolume({ name: "base", format: "qcow2", capacityBytes: 8 * MiB }).result;
  await t.client.writeVolume("base", [{ offset: 0, data: fill(MiB, 1) }, { offset: 5 * MiB, data: fill(MiB, 2) }]);
  await t.client.writeZeroes("base", 6 * MiB, MiB);
  // WriteZeroes is not a flush (metadata stays in vdisk's write-back cache); qemu-img reads the files, so flush.
  await t.client.writeVolume("base", [{ flush: true }]);
  await t.client.createVolume({ name: "mid", format: "qcow2", capacityBytes: 8 * MiB, backingVolume: "base" }).result;
  await t.client.writeVolume("mid", [{ offset: 512 * 1024, data: fill(MiB, 3) }]);
  await t.client.writeZeroes("mid", 5 * MiB, 256 * 1024);
  await t.client.writeVolume("mid", [{ flush: true }]);
  await t.client.createVolume({ name: "top", format: "qcow2", capacityBytes: 8 * MiB, backingVolume: "mid" }).result;
  await t.client.writeVolume("top", [{ offset: 3 * MiB, data: fill(64 * 1024, 4) }, { flush: true }]);
}, 120_000);

afterAll(async () => {
  await t?.close();
});

it("vdisk map --json equals qemu-img map --output=json for a chain with data, zeros and holes at several depths", async () => {
  const ours = await t.cli(["map", "top", "--json"]);
  expect(ours.code, ours.stderr).toBe(0);
  const { stdout: theirs } = await exec("qemu-img", ["map", "-U", "--output=json", join(t.pool, "top.qcow2")]);
  const parsed = JSON.parse(ours.stdout) as { depth: number; data: boolean; zero: boolean; present: boolean }[];
  expect(parsed).toEqual(JSON.parse(theirs));
  // The chain really exercises depths 0–2, zeros and holes.
  expect(new Set(parsed.filter((e) => e.present).map((e) => e.depth))).toEqual(new Set([0, 1, 2]));
  expect(parsed.some((e) => e.present && e.zero && !e.data)).toBe(true);
  expect(parsed.some((e) => !e.present)).toBe(true);
}, 60_000);
