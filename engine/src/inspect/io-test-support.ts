/**
 * Test support for the inspector and export tests: qemu-img/qemu-io as the oracle, a scratch
 * directory, byte patching and error assertions. Not used by the engine itself.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "vitest";
import { EngineError } from "../errors.js";

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a QEMU tool; a missing binary fails loudly instead of letting a test pass vacuously. */
export function run(tool: "qemu-img" | "qemu-io", args: string[]): ToolResult {
  const r = spawnSync(tool, args, { encoding: "utf8", timeout: 120_000, maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw new Error(`${tool} could not run (apt-get install qemu-utils): ${r.error.message}`);
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a QEMU tool that must succeed. */
export function ok(tool: "qemu-img" | "qemu-io", args: string[]): string {
  const r = run(tool, args);
  if (r.code !== 0) throw new Error(`${tool} ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export interface Scratch {
  dir: string;
  path(name: string): string;
  remove(): void;
}

export function makeScratch(prefix: string): Scratch {
  const dir = mkdtempSync(join(tmpdir(), `vdisk-${prefix}-`));
  return {
    dir,
    path: (name) => join(dir, name),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Copies `from` to `to` with `edit` applied to its bytes. */
export function patchedCopy(from: string, to: string, edit: (bytes: Buffer) => void): string {
  const bytes = readFileSync(from);
  edit(bytes);
  writeFileSync(to, bytes);
  return to;
}

/** Replaces `search` by `replacement` (same length or shorter, NUL-padded) inside `bytes`. */
export function replaceText(bytes: Buffer, search: string, replacement: string, within = bytes.length): void {
  const at = bytes.subarray(0, within).indexOf(search, 0, "latin1");
  if (at < 0) throw new Error(`text ${JSON.stringify(search)} not found`);
  const region = bytes.indexOf(0, at);
  const end = region < 0 ? within : region;
  const text = bytes.subarray(at, end).toString("latin1").replace(search, replacement);
  bytes.fill(0, at, end);
  bytes.write(text, at, "latin1");
}

/** Asserts that `promise` rejects with an EngineError of this code and reason. */
export async function expectEngineError(
  promise: Promise<unknown>,
  code: string,
  reason: string,
): Promise<EngineError> {
  const outcome = await promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );
  if (!("error" in outcome))
    throw new Error(`expected ${code}/${reason}, got success: ${JSON.stringify(outcome.value)}`);
  const err = outcome.error;
  if (!(err instanceof EngineError)) throw err;
  expect({ code: err.code, reason: err.reason, message: err.message }).toMatchObject({ code, reason });
  return err;
}

/** qemu-img map --output=json, parsed. */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  compressed?: boolean;
  offset?: number;
}

export function qemuMap(path: string, format: string): QemuMapEntry[] {
  return JSON.parse(ok("qemu-img", ["map", "-f", format, "--output=json", path])) as QemuMapEntry[];
}

/** Bytes that differ per offset and per seed, so misplaced data never compares equal by accident. */
export function pattern(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff || 1;
  return out;
}
