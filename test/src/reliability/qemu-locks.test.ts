import { type ChildProcessWithoutNullStreams, execFile, spawn } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { createVdiskClient, MiB, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

/**
 * vdisk and QEMU honour each other's image locks (reliability.md §1.7): a volume qemu-io has open for
 * writing is refused by vdisk with IMAGE_LOCKED, a volume vdisk has open is refused by qemu-img, and two
 * vdisk servers on one pool never write the same volume at once. Needs qemu-img/qemu-io: fails if missing.
 */
const run = promisify(execFile);
let poolDir: string;
const servers: RunningServer[] = [];
const clients: VdiskClient[] = [];
const qemus: ChildProcessWithoutNullStreams[] = [];

async function serve(): Promise<{ server: RunningServer; client: VdiskClient }> {
  const server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 1024 * MiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  const client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 });
  servers.push(server);
  clients.push(client);
  return { server, client };
}

async function stop(server: RunningServer, client: VdiskClient): Promise<void> {
  client.close();
  await server.close();
  servers.splice(servers.indexOf(server), 1);
  clients.splice(clients.indexOf(client), 1);
}

/** qemu-io with the image open read-write, kept open until killed; resolves once it shows its prompt. */
async function qemuIoHolding(file: string, format = "qcow2"): Promise<ChildProcessWithoutNullStreams> {
  const child = spawn("qemu-io", ["-f", format, file]);
  qemus.push(child);
  await new Promise<void>((resolve, reject) => {
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("qemu-io>")) resolve();
    });
    child.stderr.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`qemu-io exited (${code}): ${err}`)));
  });
  return child;
}

async function killQemu(child: ChildProcessWithoutNullStreams): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGKILL");
  await exited;
}

const data = (byte: number) => new Uint8Array(64 * 1024).fill(byte);

beforeAll(async () => {
  await run("qemu-io", ["--version"]);
  await run("qemu-img", ["--version"]);
  await mkdir("/tmp/sec", { recursive: true });
  poolDir = await mkdtemp("/tmp/sec/locks-");
  // Create the volumes, then stop so that vdisk holds no image when qemu-io opens one.
  const { server, client } = await serve();
  for (const name of ["held", "mine", "shared"])
    await client.createVolumeAndWait({ name, format: "qcow2", capacityBytes: 16 * MiB });
  await client.createVolumeAndWait({ name: "held-raw", format: "raw", capacityBytes: 16 * MiB });
  await stop(server, client);
});

afterEach(async () => {
  for (const q of qemus.splice(0)) await killQemu(q);
  for (const c of clients.splice(0)) c.close();
  for (const s of servers.splice(0)) await s.close();
});

afterAll(async () => {
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

describe("QEMU image lock interop", () => {
  it("refuses writes, zeroing, discard and resize while qemu-io has the volume open read-write", async () => {
    const qemu = await qemuIoHolding(join(poolDir, "held.qcow2"));
    const { client } = await serve();
    const locked = { code: "failed_precondition", reason: "IMAGE_LOCKED" };

    await expect(client.writeVolume("held", [{ offset: 0, data: data(1) }])).rejects.toMatchObject(locked);
    // AllocateRange is not served on main yet; the allocation service's unary mutations stand in for it.
    await expect(client.writeZeroes("held", 0, MiB)).rejects.toMatchObject(locked);
    await expect(client.discard("held", 0, MiB)).rejects.toMatchObject(locked);
    // ResizeVolume is served for raw volumes only so far: a raw volume held by qemu-io shows the job failing.
    const rawQemu = await qemuIoHolding(join(poolDir, "held-raw.raw"), "raw");
    await expect(client.resizeVolume("held-raw", 32 * MiB).result).rejects.toMatchObject(locked);
    await killQemu(rawQemu);
    expect((await client.resizeVolume("held-raw", 32 * MiB).result).capacityBytes).toBe(32 * MiB);

    // The failure is not remembered: once qemu-io is gone the same server writes.
    await killQemu(qemu);
    const written = await client.writeVolume("held", [{ offset: 0, data: data(2) }]);
    expect(written.writtenBytes).toBe(64 * 1024);
    expect((await client.getVolume("held")).name).toBe("held");
  });

  it("keeps qemu-img out while vdisk has the volume open, but lets -U (force share) read", async () => {
    const { client } = await serve();
    await client.writeVolume("mine", [{ offset: 0, data: data(3) }, { flush: true }]);
    const file = join(poolDir, "mine.qcow2");
    const plain = await run("qemu-img", ["info", file]).catch((e: { stderr?: string }) => e);
    expect(String((plain as { stderr?: string }).stderr)).toMatch(/Failed to get shared "write" lock/);
    const forced = await run("qemu-img", ["info", "-U", "--output=json", file]);
    expect(JSON.parse(forced.stdout)["virtual-size"]).toBe(16 * MiB);
  });

  it("two servers on one pool never write the same volume at once", async () => {
    const first = await serve();
    const second = await serve();
    await first.client.writeVolume("shared", [{ offset: 0, data: data(4) }]);
    await expect(second.client.writeVolume("shared", [{ offset: 0, data: data(5) }])).rejects.toMatchObject({
      code: "failed_precondition",
      reason: "IMAGE_LOCKED",
    });
    // The first server still has it, and still writes.
    await first.client.writeVolume("shared", [{ offset: 64 * 1024, data: data(6) }]);
    // Once the first server stops, the second takes over.
    await stop(first.server, first.client);
    await second.client.writeVolume("shared", [{ offset: 0, data: data(5) }]);
  });
});
