import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { EngineError } from "../errors.js";
import type { HostFile, LockMode } from "./host-file.js";
import { openHostFile } from "./node-file.js";

/** QEMU is the oracle: these tests fail (not skip) when qemu-img / qemu-io are missing. */
function run(cmd: string, args: string[]): { status: number | null; output: string } {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: 20_000 });
  if (r.error) throw new Error(`${cmd} could not be run (is qemu-utils installed?): ${r.error.message}`);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

let dir: string;
const opened: HostFile[] = [];
const children: ChildProcessWithoutNullStreams[] = [];

beforeAll(() => {
  expect(run("qemu-img", ["--version"]).status).toBe(0);
  expect(run("qemu-io", ["--version"]).status).toBe(0);
});

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "vdisk-locks-"));
});

afterEach(async () => {
  for (const c of children.splice(0)) await stopQemuIo(c);
  for (const f of opened.splice(0)) await f.close().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

function createImage(format: "raw" | "qcow2", name = `img.${format}`): string {
  const path = join(dir, name);
  const r = run("qemu-img", ["create", "-f", format, path, "1M"]);
  expect(r.status, r.output).toBe(0);
  return path;
}

async function openImage(path: string, readOnly = false): Promise<HostFile> {
  const f = await openHostFile(path, { readOnly });
  opened.push(f);
  return f;
}

/** qemu-io reading commands from a pipe we keep open: holds the image (and its locks) until we end stdin. */
async function holdWithQemuIo(
  path: string,
  format: string,
  readOnly: boolean,
): Promise<ChildProcessWithoutNullStreams> {
  const args = ["-f", format, ...(readOnly ? ["-r"] : []), path];
  const child = spawn("qemu-io", args, { stdio: "pipe" });
  children.push(child);
  let output = "";
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`qemu-io did not start: ${output}`)), 15_000);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      // The prompt appears once the image is open and locked.
      if (output.includes("qemu-io>")) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`qemu-io exited early (${code}): ${output}`));
    });
  });
  return child;
}

async function stopQemuIo(child: ChildProcessWithoutNullStreams): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.stdin.end("quit\n");
  await exited;
}

async function expectImageLocked(f: HostFile, mode: LockMode): Promise<void> {
  const err = await f.lockImage(mode).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `lockImage("${mode}") should be refused`).toBeInstanceOf(EngineError);
  expect((err as EngineError).code).toBe("FAILED_PRECONDITION");
  expect((err as EngineError).reason).toBe("IMAGE_LOCKED");
}

describe("QEMU image locks: QEMU holds the image", () => {
  it("a QEMU writer on a raw image blocks exclusive and shared locks until it exits", async () => {
    const path = createImage("raw");
    const qemu = await holdWithQemuIo(path, "raw", false);
    const f = await openImage(path);
    await expectImageLocked(f, "exclusive");
    await expectImageLocked(f, "shared");
    await stopQemuIo(qemu);
    await f.lockImage("exclusive");
  });

  it("a QEMU writer on a qcow2 image blocks an exclusive lock", async () => {
    const path = createImage("qcow2");
    await holdWithQemuIo(path, "qcow2", false);
    const f = await openImage(path);
    await expectImageLocked(f, "exclusive");
  });

  it("a QEMU reader allows our shared lock but not an exclusive one", async () => {
    const path = createImage("qcow2");
    await holdWithQemuIo(path, "qcow2", true);
    const f = await openImage(path);
    await f.lockImage("shared");
    await expectImageLocked(f, "exclusive");
    // The failed upgrade kept the shared lock: a QEMU writer is still refused.
    const r = run("qemu-io", ["-f", "qcow2", "-c", "read 0 512", path]);
    expect(r.status).not.toBe(0);
    expect(r.output).toMatch(/Failed to get "write" lock/);
  });
});

describe("QEMU image locks: we hold the image", () => {
  it("exclusive: qemu-img info needs -U, and a QEMU writer is refused", async () => {
    const path = createImage("qcow2");
    const f = await openImage(path);
    await f.lockImage("exclusive");

    const info = run("qemu-img", ["info", path]);
    expect(info.status).not.toBe(0);
    expect(info.output).toMatch(/Failed to get shared "write" lock/);

    const forced = run("qemu-img", ["info", "-U", path]);
    expect(forced.status, forced.output).toBe(0);
    expect(forced.output).toMatch(/file format: qcow2/);

    const writer = run("qemu-io", ["-f", "qcow2", "-c", "write 0 512", path]);
    expect(writer.status).not.toBe(0);
    expect(writer.output).toMatch(/Failed to get "write" lock/);

    await f.unlockImage();
    const after = run("qemu-img", ["info", path]);
    expect(after.status, after.output).toBe(0);
  });

  it("shared: QEMU readers coexist, QEMU writers are refused", async () => {
    const path = createImage("raw");
    const f = await openImage(path, true);
    await f.lockImage("shared");
    expect(run("qemu-img", ["info", path]).status).toBe(0);
    const writer = run("qemu-io", ["-f", "raw", "-c", "write 0 512", path]);
    expect(writer.status).not.toBe(0);
    expect(writer.output).toMatch(/Failed to get "write" lock/);
  });

  it("closing the file releases its locks", async () => {
    const path = createImage("qcow2");
    const f = await openImage(path);
    await f.lockImage("exclusive");
    await f.close();
    const r = run("qemu-io", ["-f", "qcow2", "-c", "write 0 512", path]);
    expect(r.status, r.output).toBe(0);
  });
});

describe("QEMU image locks: two open files in this process", () => {
  it("exclusive excludes exclusive and shared; shared coexists with shared", async () => {
    const path = createImage("raw");
    const a = await openImage(path);
    const b = await openImage(path);
    await a.lockImage("exclusive");
    await expectImageLocked(b, "exclusive");
    await expectImageLocked(b, "shared");
    // Downgrade: a now only reads.
    await a.lockImage("shared");
    await b.lockImage("shared");
    await expectImageLocked(a, "exclusive");
    await b.unlockImage();
    await a.lockImage("exclusive");
  });
});
