import { execFile } from "node:child_process";
import { readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { MiB } from "@vdisk/sdk";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  closedPort,
  finalStateOf,
  runCli,
  runningJobOf,
  spawnCli,
  startTestServer,
  type TestServer,
} from "./harness.js";

// Every CLI run is a fresh Node process (~1-3 s on a loaded 2-core machine); tests make several.
vi.setConfig({ testTimeout: 120_000 });

/**
 * The `vdisk` command as an operator runs it: a child process against a real server on 127.0.0.1:0, checked
 * by its output and exit code. qemu-img is the oracle for `map --json` (required: the test fails without it).
 */
const exec = promisify(execFile);
let t: TestServer;

beforeAll(async () => {
  t = await startTestServer("commands");
});
afterAll(async () => {
  await t?.close();
});

// Guest data of the round-trip volume: two data runs in a 16 MiB disk, the rest holes.
const DISK = 16 * MiB;
const RUNS = [
  { at: 1 * MiB, length: 256 * 1024 },
  { at: 9 * MiB, length: 2 * MiB },
];

function pattern(length: number, seed: number): Buffer {
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed) % 251 || 1;
  return bytes;
}

describe("usage errors exit 2", () => {
  it.each([
    ["no command", []],
    ["unknown command", ["frobnicate"]],
    ["incomplete command group", ["volume"]],
    ["bad size", ["volume", "create", "x", "--format", "raw", "--size", "10Q"]],
    ["bad format", ["volume", "create", "x", "--format", "zip", "--size", "1G"]],
    ["missing mandatory option", ["volume", "create", "x", "--size", "1G"]],
    ["missing --length", ["zero", "x", "--offset", "0"]],
    ["bad label", ["volume", "list", "--label", "novalue"]],
    ["bad allocate mode", ["allocate", "x", "--mode", "sideways"]],
    ["bad --server", ["--server", "not an address", "volume", "list"]],
    ["--tls-cert without --tls-key", ["--tls-cert", "/dev/null", "volume", "list"]],
    ["unreadable --tls-ca", ["--tls-ca", "/nonexistent/ca.pem", "volume", "list"]],
  ])("%s", async (_what, args) => {
    const r = await runCli(args);
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr.length).toBeGreaterThan(0);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it("--help documents every command and the exit codes, and exits 0", async () => {
    const r = await runCli(["--help"]);
    expect(r.code).toBe(0);
    for (const word of [
      "serve",
      "volume",
      "map",
      "allocate",
      "zero",
      "discard",
      "upload",
      "download",
      "import",
      "export",
      "job",
    ])
      expect(r.stdout).toContain(word);
    expect(r.stdout).toMatch(
      /Exit codes:[\s\S]*0 +success[\s\S]*1 +the operation failed[\s\S]*2 +usage error[\s\S]*3 +connection failure[\s\S]*130 +interrupted/,
    );
  });
});

describe("connection failure exits 3", () => {
  it("reports an unreachable server (flag and VDISK_SERVER)", async () => {
    const port = await closedPort();
    const flag = await runCli(["--server", `127.0.0.1:${port}`, "volume", "list"]);
    expect(flag.code, flag.stderr).toBe(3);
    expect(flag.stderr).toMatch(/cannot reach the server: unavailable/);
    const env = await runCli(["volume", "get", "x"], { VDISK_SERVER: `127.0.0.1:${port}` });
    expect(env.code, env.stderr).toBe(3);
  });
});

describe("volume create / list / get / rm", () => {
  it("creates, lists with label filters, gets and deletes, in text and JSON", async () => {
    const created = await t.cli([
      "volume",
      "create",
      "alpha",
      "--format",
      "raw",
      "--size",
      "64M",
      "--label",
      "tier=gold",
      "--label",
      "team=a",
    ]);
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toBe("Created volume alpha: raw, 64 MiB\n");

    const json = await t.cli([
      "--json",
      "volume",
      "create",
      "beta",
      "--format",
      "raw",
      "--size",
      "1GiB",
      "--label",
      "tier=silver",
    ]);
    expect(json.code, json.stderr).toBe(0);
    const beta = JSON.parse(json.stdout);
    expect(beta).toMatchObject({
      name: "beta",
      format: "raw",
      state: "ready",
      capacityBytes: 1024 ** 3,
      labels: { tier: "silver" },
    });

    const list = await t.cli(["volume", "list"]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^NAME +FORMAT +STATE +CAPACITY/);
    expect(list.stdout).toMatch(/alpha +raw +ready +64 MiB/);
    expect(list.stdout).toMatch(/beta +raw +ready +1 GiB/);

    const gold = JSON.parse((await t.cli(["--json", "volume", "list", "--label", "tier=gold"])).stdout);
    expect(gold.map((v: { name: string }) => v.name)).toEqual(["alpha"]);

    const get = await t.cli(["volume", "get", "alpha"]);
    expect(get.code).toBe(0);
    expect(get.stdout).toMatch(/^name: +alpha$/m);
    expect(get.stdout).toMatch(/^capacity: +64 MiB \(67108864 bytes\)$/m);
    expect(get.stdout).toMatch(/^labels: +team=a,tier=gold$/m);
    const getJson = JSON.parse((await t.cli(["--json", "volume", "get", "alpha"])).stdout);
    expect(getJson).toMatchObject({ name: "alpha", capacityBytes: 64 * MiB, allocationBytes: 0 });

    const rm = await t.cli(["volume", "rm", "beta"]);
    expect(rm.code, rm.stderr).toBe(0);
    expect(rm.stdout).toBe("Deleted volume beta\n");
    const names = JSON.parse((await t.cli(["--json", "volume", "list"])).stdout).map(
      (v: { name: string }) => v.name,
    );
    expect(names).toEqual(["alpha"]);
  });

  it("reports server errors with code, reason and message, exit 1", async () => {
    const missing = await t.cli(["volume", "get", "nope"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^vdisk: error: not_found \([A-Z_]+\): .*nope/);
    const json = await t.cli(["--json", "volume", "rm", "nope"]);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: "not_found", status: 5 } });

    await t.cli(["volume", "create", "dup", "--format", "raw", "--size", "1M"]);
    const conflict = await t.cli(["volume", "create", "dup", "--format", "raw", "--size", "2M"]);
    expect(conflict.code).toBe(1);
    expect(conflict.stderr).toMatch(/^vdisk: error: already_exists/);

    const badName = await t.cli(["volume", "create", "../etc", "--format", "raw", "--size", "1M"]);
    expect(badName.code).toBe(1);
    expect(badName.stderr).toMatch(/^vdisk: error: invalid_argument/);
  });
});

describe("data: upload, download, map, zero, discard", () => {
  let source: string;
  let copy: string;

  beforeAll(async () => {
    source = join(t.pool, "..", `upload-${process.pid}.img`);
    copy = join(t.pool, "..", `download-${process.pid}.img`);
    const image = Buffer.alloc(DISK);
    RUNS.forEach((run, i) => {
      pattern(run.length, i + 3).copy(image, run.at);
    });
    await writeFile(source, image);
    const created = await t.cli(["volume", "create", "data", "--format", "raw", "--size", "16M"]);
    expect(created.code, created.stderr).toBe(0);
  });
  afterAll(async () => {
    await exec("rm", ["-f", source, copy]);
  });

  it("uploads sparsely and downloads into an identical sparse file", async () => {
    const up = await t.cli(["--json", "upload", "data", source]);
    expect(up.code, up.stderr).toBe(0);
    const written = JSON.parse(up.stdout);
    // Only the data runs travel as bytes; the holes go as zero runs.
    expect(written.writtenBytes).toBe(RUNS.reduce((n, r) => n + r.length, 0));
    expect(written.zeroedBytes).toBe(DISK - written.writtenBytes);

    const down = await t.cli(["download", "data", copy]);
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(/^Downloaded data to .*: 16 MiB file, 2.25 MiB of data$/m);
    expect(Buffer.compare(await readFile(copy), await readFile(source))).toBe(0);
    const st = await stat(copy);
    expect(st.size).toBe(DISK);
    expect(st.blocks * 512).toBeLessThan(DISK / 2);
  });

  it("map --json is deep-equal to qemu-img map --output=json of the pool file", async () => {
    const r = await t.cli(["map", "data", "--json"]);
    expect(r.code, r.stderr).toBe(0);
    const { stdout: qemu } = await exec("qemu-img", [
      "map",
      "-U",
      "--output=json",
      "-f",
      "raw",
      join(t.pool, "data.raw"),
    ]);
    expect(JSON.parse(r.stdout)).toEqual(JSON.parse(qemu));
    expect(JSON.parse(r.stdout).some((e: { data: boolean }) => e.data)).toBe(true);
    expect(JSON.parse(r.stdout).some((e: { data: boolean }) => !e.data)).toBe(true);
    // Same text too, not just the same values.
    expect(r.stdout).toBe(qemu);

    const ranged = await t.cli(["map", "data", "--json", "--offset", "8M", "--length", "4M"]);
    const { stdout: qemuRanged } = await exec("qemu-img", [
      "map",
      "-U",
      "--output=json",
      "-f",
      "raw",
      "--start-offset",
      String(8 * MiB),
      "--max-length",
      String(4 * MiB),
      join(t.pool, "data.raw"),
    ]);
    expect(JSON.parse(ranged.stdout)).toEqual(JSON.parse(qemuRanged));

    const human = await t.cli(["map", "data"]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/^START +LENGTH +DEPTH +PRESENT +ZERO +DATA/);
    expect(human.stdout).toMatch(/data 2.25 MiB, zero 13.8 MiB/);
  });

  it("discard and zero --unmap turn data runs into zeros (map follows qemu-img)", async () => {
    const d = await t.cli(["discard", "data", "--offset", "1M", "--length", "256K"]);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toBe("Discarded 256 KiB of data at offset 1048576\n");
    const z = await t.cli(["--json", "zero", "data", "--offset", "9M", "--length", "1M", "--unmap"]);
    expect(z.code, z.stderr).toBe(0);
    expect(JSON.parse(z.stdout)).toEqual({ volume: "data", offset: 9 * MiB, length: MiB, zeroed: true });
    const zNoUnmap = await t.cli(["zero", "data", "--offset", "10M", "--length", "64K"]);
    expect(zNoUnmap.code, zNoUnmap.stderr).toBe(0);

    const map = JSON.parse((await t.cli(["map", "data", "--json"])).stdout);
    const { stdout: qemu } = await exec("qemu-img", [
      "map",
      "-U",
      "--output=json",
      "-f",
      "raw",
      join(t.pool, "data.raw"),
    ]);
    expect(map).toEqual(JSON.parse(qemu));
    const dataBytes = map
      .filter((e: { data: boolean }) => e.data)
      .reduce((n: number, e: { length: number }) => n + e.length, 0);
    expect(dataBytes).toBeLessThanOrEqual(MiB);

    const past = await t.cli(["zero", "data", "--offset", "16M", "--length", "1M"]);
    expect(past.code).toBe(1);
    expect(past.stderr).toMatch(/^vdisk: error: (out_of_range|invalid_argument)/);
  });

  it("download of a missing volume fails with exit 1, upload of a missing file too", async () => {
    const r = await t.cli(["download", "missing", copy]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/not_found/);
    const u = await t.cli(["upload", "data", "/nonexistent/file.img"]);
    expect(u.code).toBe(1);
    expect(u.stderr).toMatch(/ENOENT/);
  });
});

describe("jobs: list, get, watch, cancel", () => {
  it("lists and gets the create job, watches a finished job (JSON lines), cancels idempotently", async () => {
    await t.cli(["volume", "create", "jobbed", "--format", "raw", "--size", "4M", "--prealloc", "falloc"]);
    const list = JSON.parse((await t.cli(["--json", "job", "list", "--volume", "jobbed"])).stdout);
    expect(list).toHaveLength(1);
    const id = list[0].id as string;
    expect(list[0]).toMatchObject({ kind: "create", volume: "jobbed", state: "succeeded" });

    const human = await t.cli(["job", "list"]);
    expect(human.stdout).toMatch(new RegExp(`${id} +create +jobbed +succeeded`));

    const get = await t.cli(["job", "get", id]);
    expect(get.code).toBe(0);
    expect(get.stdout).toMatch(/^state: +succeeded$/m);
    expect(JSON.parse((await t.cli(["--json", "job", "get", id])).stdout)).toMatchObject({
      id,
      state: "succeeded",
      error: null,
    });

    const watch = await t.cli(["--json", "job", "watch", id]);
    expect(watch.code, watch.stderr).toBe(0);
    const lines = watch.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(lines.at(-1)).toMatchObject({ id, state: "succeeded" });
    expect(lines.at(-2)).toMatchObject({ jobId: id, state: "succeeded" });

    const cancel = await t.cli(["job", "cancel", id]);
    expect(cancel.code, cancel.stderr).toBe(0);
    expect(cancel.stdout).toMatch(/state: succeeded/);

    const missing = await t.cli(["job", "get", "job-does-not-exist"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/not_found/);
  });

  it("job cancel stops a running job; job watch then exits 130 with the CANCELLED record", async () => {
    const handle = t.client.createVolume({
      name: "slow",
      format: "raw",
      capacityBytes: 16 * 1024 ** 3,
      preallocation: "full",
    });
    const id = await handle.jobId;
    await runningJobOf(t.client, "slow");
    const cancel = await t.cli(["job", "cancel", id]);
    expect(cancel.code, cancel.stderr).toBe(0);
    expect(cancel.stdout).toContain(`Cancel requested for job ${id}`);
    await expect(handle.result).rejects.toMatchObject({ code: "canceled" });
    const watch = await t.cli(["--json", "job", "watch", id]);
    expect(watch.code).toBe(130);
    const last = JSON.parse(watch.stdout.trim().split("\n").at(-1) as string);
    expect(last).toMatchObject({ id, state: "cancelled", error: { code: "canceled" } });
    const human = await t.cli(["job", "watch", id]);
    expect(human.code).toBe(130);
    expect(human.stderr).toContain(`Job ${id} was cancelled.`);
  });

  it("without a terminal, SIGINT detaches (exit 130) and the job keeps running", async () => {
    const child = spawnCli([
      "--server",
      `127.0.0.1:${t.port}`,
      "volume",
      "create",
      "detached",
      "--format",
      "raw",
      "--size",
      "16G",
      "--prealloc",
      "full",
    ]);
    let stderr = "";
    let stdout = "";
    child.stderr?.on("data", (d) => (stderr += d));
    child.stdout?.on("data", (d) => (stdout += d));
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    const id = await runningJobOf(t.client, "detached");
    child.kill("SIGINT");
    expect(await exited).toBe(130);
    expect(stdout).toBe(""); // no bar, no result without a terminal
    expect(stderr).toContain(`Detached: job ${id} keeps running on the server.`);
    expect(stderr).toContain(`vdisk job watch ${id}`);
    const job = await t.client.getJob(id);
    expect(job.state).toBe("running");
    await t.client.cancelJob(id);
    expect(await finalStateOf(t.client, id)).toBe("cancelled");
  });
});

const IMPORT_FILE = `/tmp/cli-tests/import-${process.pid}.raw`;
const EXPORT_FILE = `/tmp/cli-tests/export-${process.pid}.raw`;

describe("job and file commands", () => {
  beforeAll(async () => {
    const r = await t.cli(["volume", "create", "subject", "--format", "raw", "--size", "1M"]);
    expect(r.code, r.stderr).toBe(0);
    await writeFile(IMPORT_FILE, pattern(MiB, 9));
  });
  afterAll(async () => {
    await exec("rm", ["-f", IMPORT_FILE, EXPORT_FILE]);
  });

  it.each([
    ["resize", ["volume", "resize", "subject", "--size", "2M"]],
    ["clone", ["volume", "clone", "subject", "subject-copy", "--format", "raw"]],
    ["clone --linked", ["volume", "clone", "subject", "subject-overlay", "--linked"]],
    ["check", ["volume", "check", "subject", "--repair", "leaks"]],
    ["flatten", ["volume", "flatten", "subject"]],
    ["allocate", ["allocate", "subject", "--mode", "full"]],
    ["export", ["export", "subject", EXPORT_FILE, "--format", "raw"]],
    ["import", ["import", "imported", IMPORT_FILE, "--format", "raw"]],
  ])("%s", async (_what, args) => {
    // Every one of these RPCs is served now: the command must succeed end to end.
    const r = await t.cli(args);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
  });

  it("reports a server error (vmdk resize is UNIMPLEMENTED) as a JSON error document with --json", async () => {
    const made = await t.cli(["volume", "create", "vsubject", "--format", "vmdk", "--size", "1M"]);
    expect(made.code, made.stderr).toBe(0);
    const r = await t.cli(["--json", "volume", "resize", "vsubject", "--size", "4M"]);
    expect(r.code).toBe(1);
    const doc = JSON.parse(r.stdout);
    expect(doc.error.code).toMatch(/^[a-z_]+$/);
    expect(doc.error.message.length).toBeGreaterThan(0);
  });
});
