import { execFile } from "node:child_process";
import { open, readdir } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { VdiskClient, Volume } from "@vdisk/sdk";
import type { VolumeOracle } from "./oracle.js";
import { identifySector, SECTOR } from "./sectors.js";

const run = promisify(execFile);

/** A broken "nothing lost" promise: the message says what differed. */
export class CrashLoopViolation extends Error {}

function fail(message: string): never {
  throw new CrashLoopViolation(message);
}

/** The qcow2 header's incompatible-feature bit 0: refcounts not yet consistent (lazy refcounts). */
export async function qcow2DirtyOnDisk(path: string): Promise<boolean> {
  const handle = await open(path, "r");
  try {
    const header = Buffer.alloc(80);
    await handle.read(header, 0, 80, 0);
    if (header.readUInt32BE(4) < 3) return false;
    return (header.readBigUInt64BE(72) & 1n) === 1n;
  } finally {
    await handle.close();
  }
}

export interface QemuCheck {
  exitCode: number;
  leaks: number;
}

/**
 * `qemu-img check` on the pool file. -U because the server holds QEMU's image locks on open volumes;
 * the format is always given (never probed). Exit 0 = clean, 3 = leaks only; 2 (corruption) or 1
 * (check failed) break "nothing lost".
 */
export async function qemuCheck(path: string): Promise<QemuCheck> {
  let stdout: string;
  let exitCode = 0;
  try {
    ({ stdout } = await run("qemu-img", ["check", "-U", "-f", "qcow2", "--output=json", path]));
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    if (e.code === "ENOENT")
      throw new Error("qemu-img is not installed: the crash loop needs it as its oracle");
    exitCode = typeof e.code === "number" ? e.code : -1;
    stdout = e.stdout ?? "";
    if (exitCode !== 3) fail(`qemu-img check exited ${exitCode} on ${path}:\n${stdout}${e.stderr ?? ""}`);
  }
  const report = JSON.parse(stdout) as { corruptions?: number; leaks?: number; "check-errors"?: number };
  if ((report.corruptions ?? 0) > 0 || (report["check-errors"] ?? 0) > 0)
    fail(`qemu-img check reports corruption on ${path}: ${stdout}`);
  return { exitCode, leaks: report.leaks ?? 0 };
}

/** Reads a whole volume and names every sector's token; the first mismatches against the oracle fail. */
export async function verifyContent(
  client: VdiskClient,
  oracle: VolumeOracle,
  capacity: number,
): Promise<Uint32Array> {
  const bytes = new Uint8Array(capacity);
  let end = 0;
  for await (const piece of client.readVolume(oracle.name, { sparse: true })) {
    if ("data" in piece) bytes.set(piece.data, piece.offset);
    end = Math.max(end, piece.offset + ("data" in piece ? piece.data.length : piece.length));
  }
  if (end !== capacity) fail(`${oracle.name}: read ${end} bytes, capacity is ${capacity}`);
  const observed = new Uint32Array(capacity / SECTOR);
  const problems: string[] = [];
  let bad = 0;
  let firstBad = -1;
  for (let s = 0; s < observed.length; s++) {
    const found = identifySector(bytes, s * SECTOR, s, oracle.tag);
    // Most sectors hold their durable content: only the others need the set of allowed contents.
    if ("token" in found && (found.token === oracle.tokens[s] || oracle.allowedTokens(s).has(found.token))) {
      observed[s] = found.token;
      continue;
    }
    const allowed = oracle.allowedTokens(s);
    bad++;
    if (firstBad < 0) firstBad = s;
    if (problems.length < 8) {
      const what = "token" in found ? `token ${found.token}` : found.garbage;
      problems.push(
        `  sector ${s} (offset ${s * SECTOR}): read ${what}, allowed {${[...allowed].join(", ")}}`,
      );
    }
  }
  if (bad > 0) {
    fail(
      `${oracle.name}: ${bad} sector(s) differ from the oracle (pending: ${JSON.stringify(oracle.pending)}):\n${problems.join("\n")}\n` +
        `history of sector ${firstBad} (and size changes), oldest first:\n  ${oracle.historyOf(firstBad).join("\n  ")}`,
    );
  }
  return observed;
}

/** Server-side state after a restart: volume READY, capacity one the oracle allows, no corrupt/dirty flag. */
export function verifyVolumeRecord(volume: Volume, oracle: VolumeOracle): void {
  if (volume.state !== "ready")
    fail(`${oracle.name}: state ${volume.state} after restart (${volume.errorMessage ?? "no message"})`);
  const allowed = oracle.allowedCapacities();
  if (!allowed.has(volume.capacityBytes))
    fail(`${oracle.name}: capacity ${volume.capacityBytes}, allowed {${[...allowed].join(", ")}}`);
  if (volume.qcow2?.corrupt) fail(`${oracle.name}: corrupt bit set after restart`);
  if (volume.qcow2?.dirty)
    fail(`${oracle.name}: still dirty after the server reopened it (repair did not run)`);
}

/**
 * The CheckVolume job (repairing leaks, as an operator would) finds no corruption, finds the same leaks as
 * qemu-img (when it ran), and repairs all of them.
 */
export async function verifyCheckJob(client: VdiskClient, name: string, qemuLeaks?: number): Promise<void> {
  const report = await client.checkVolume(name, { repair: "leaks" }).result;
  if (report.corruptions > 0 || report.checkErrors > 0)
    fail(
      `${name}: CheckVolume reports ${report.corruptions} corruption(s), ${report.checkErrors} error(s): ${report.messages.join("; ")}`,
    );
  // Like qemu-img check -r, the report counts what is left after the repair apart from what was fixed.
  const found = report.leaks + report.leaksFixed;
  if (qemuLeaks !== undefined && found !== qemuLeaks)
    fail(`${name}: CheckVolume found ${found} leaked cluster(s), qemu-img check ${qemuLeaks}`);
  if (report.leaks > 0)
    fail(`${name}: ${report.leaks} leaked cluster(s) left after CheckVolume repaired leaks`);
}

/** No half-made file survives a restart, and the pool holds exactly the volumes' files. */
export async function verifyPoolFiles(pool: string, expected: string[]): Promise<void> {
  const temps = await readdir(join(pool, ".vdisk", "tmp"));
  if (temps.length > 0) fail(`temporary files left after restart: ${temps.join(", ")}`);
  const files = (await readdir(pool)).filter((f) => f !== ".vdisk").sort();
  const want = [...expected].sort();
  if (files.join("\n") !== want.join("\n"))
    fail(`pool files ${files.join(", ")}; expected ${want.join(", ")}`);
}

/** Every job ends: FAILED by the restart, finished, or (if the server resumes it) finishing soon. */
export async function verifyJobsTerminal(client: VdiskClient, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = [];
    for await (const job of client.listJobs({ states: ["queued", "running"] })) open.push(job);
    if (open.length === 0) return;
    if (Date.now() > deadline)
      fail(
        `jobs not terminal ${timeoutMs} ms after restart: ${open.map((j) => `${j.id} ${j.kind} ${j.state}`).join(", ")}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}
