import { execFile } from "node:child_process";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { credentials, Client as GrpcClient } from "@grpc/grpc-js";
import type { VdiskClient, VdiskError } from "@vdisk/sdk";
import { expect } from "vitest";

const run = promisify(execFile);

/** Non-zero 512-byte sectors that differ by seed, so misplaced or stale sectors are told apart. */
export function pattern(length: number, seed: number): Buffer {
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i += 512) bytes.fill(((i / 512 + seed) % 250) + 1, i, i + 512);
  return bytes;
}

export async function readAll(client: VdiskClient, name: string, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  for await (const piece of client.readVolume(name, { sparse: true }))
    if ("data" in piece) out.set(piece.data, piece.offset);
  return out;
}

/** The error a call failed with; fails the test if it succeeded. */
export async function failureOf(promise: Promise<unknown>): Promise<VdiskError> {
  try {
    await promise;
  } catch (err) {
    return err as VdiskError;
  }
  throw new Error("the call should have failed");
}

/**
 * "Nothing lost" rule 4 (reliability.md §c) for a write that failed: each 512-byte sector of the range
 * holds either what it held before or what the failed write tried to put there, never anything else.
 */
export function expectOldOrNew(actual: Buffer, before: Buffer, attempted: Buffer, what: string): void {
  for (let at = 0; at < actual.length; at += 512) {
    const sector = actual.subarray(at, at + 512);
    const ok =
      sector.equals(before.subarray(at, at + 512)) || sector.equals(attempted.subarray(at, at + 512));
    if (!ok) expect.fail(`${what}: sector at ${at} is neither its old content nor the attempted write`);
  }
}

/**
 * `qemu-img check -U` passes with leaks at most: exit 0 (clean) or 3 (leaked clusters), never 2
 * (corruption) or 1 (could not check). A missing qemu-img fails the test instead of passing it.
 */
export async function qemuCheck(file: string, format: "qcow2" | "vmdk"): Promise<"clean" | "leaks"> {
  try {
    await run("qemu-img", ["check", "-U", "-f", format, file]);
    return "clean";
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    if (e.code === "ENOENT")
      throw new Error("qemu-img is not installed (Debian: qemu-utils); the ENOSPC test needs it");
    if (e.code === 3) return "leaks";
    throw new Error(`qemu-img check of ${file} failed (exit ${e.code}):\n${e.stdout}${e.stderr}`);
  }
}

/**
 * Nothing half-made is visible: exactly the expected volumes, all READY; no job left running; no temp
 * or staging file in the pool; no file in the pool root besides the volumes' own.
 */
export async function expectNothingHalfMade(
  client: VdiskClient,
  pool: string,
  expected: Record<string, "raw" | "qcow2" | "vmdk">,
): Promise<void> {
  const volumes: Record<string, string> = {};
  for await (const v of client.listVolumes()) {
    expect(v.state, `volume ${v.name}`).toBe("ready");
    volumes[v.name] = v.format;
  }
  expect(volumes).toEqual(expected);
  const unfinished = [];
  for await (const job of client.listJobs({ states: ["queued", "running"] })) unfinished.push(job.id);
  expect(unfinished).toEqual([]);
  expect(await readdir(join(pool, ".vdisk", "tmp"))).toEqual([]);
  const files = (await readdir(pool)).filter((f) => f !== ".vdisk").sort();
  expect(files).toEqual(
    Object.entries(expected)
      .map(([name, format]) => `${name}.${format}`)
      .sort(),
  );
}

type Health = "SERVING" | "NOT_SERVING" | "OTHER";

/** grpc.health.v1.Health/Check of the whole server, decoded by hand (field 1, varint: 1 SERVING, 2 NOT_SERVING). */
function health(port: number): Promise<Health> {
  const client = new GrpcClient(`127.0.0.1:${port}`, credentials.createInsecure());
  return new Promise<Health>((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      () => Buffer.alloc(0),
      (reply: Buffer) => reply,
      {},
      (err, reply) => {
        client.close();
        if (err) return reject(err);
        const status = reply?.[0] === 0x08 ? reply[1] : undefined;
        resolve(status === 1 ? "SERVING" : status === 2 ? "NOT_SERVING" : "OTHER");
      },
    );
  });
}

/** Polls health until it reports `want` (the server probes its pool on a timer), for up to 5 s. */
export async function eventuallyHealth(port: number, want: Health): Promise<Health> {
  let last: Health = "OTHER";
  for (let i = 0; i < 100 && last !== want; i++) {
    last = await health(port);
    if (last !== want) await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return last;
}
