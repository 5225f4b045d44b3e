import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createVdiskClient, GiB, MiB, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, expect, it } from "vitest";

/**
 * What the streams4 benchmark does, smaller and repeated: two downloads and two uploads at once through
 * one client. A stall here is permanent and idle (HTTP/2 peers both blocked writing), so a watchdog fails
 * the test as soon as no byte moves for a while instead of waiting for the test timeout.
 */
const SIZE = 32 * MiB;
const ROUNDS = 3;
const IDLE_LIMIT_MS = 10_000;

let poolDir: string;
let workDir: string;
let server: RunningServer;
let client: VdiskClient;
let source: Buffer;

beforeAll(async () => {
  await mkdir("/tmp/sdk", { recursive: true });
  poolDir = await mkdtemp("/tmp/sdk/e2e-streams-pool-");
  workDir = await mkdtemp("/tmp/sdk/e2e-streams-work-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 64 * GiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 });
  source = randomBytes(SIZE);
  await writeFile(join(workDir, "source.raw"), source);
  for (const name of ["src0", "src1"]) {
    await client.createVolumeAndWait({ name, format: "raw", capacityBytes: SIZE });
    await client.uploadFile(name, join(workDir, "source.raw"));
  }
});

afterAll(() => {
  // Not awaited: after a stall the wedged connection may never close cleanly; the failure is already known.
  client?.close();
  void server?.close();
});

async function sizeOf(path: string, allocated: boolean): Promise<number> {
  try {
    const info = await stat(path);
    return allocated ? info.blocks * 512 : info.size;
  } catch {
    return 0;
  }
}

/** Rejects once none of the transfers' files grows for IDLE_LIMIT_MS. */
function watchdog(downloads: string[], uploads: string[]): { stalled: Promise<never>; stop(): void } {
  let last = "";
  let idleSince = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setInterval(async () => {
      const sizes = await Promise.all([
        ...downloads.map((path) => sizeOf(path, false)),
        ...uploads.map((path) => sizeOf(path, true)),
      ]);
      const now = sizes.map((bytes) => Math.floor(bytes / MiB)).join(",");
      if (now !== last) {
        last = now;
        idleSince = Date.now();
      } else if (Date.now() - idleSince > IDLE_LIMIT_MS) {
        reject(new Error(`no progress for ${IDLE_LIMIT_MS} ms at [${now}] MiB (down, down, up, up)`));
      }
    }, 250);
  });
  return { stalled, stop: () => clearInterval(timer) };
}

it("runs two downloads and two uploads at once, round after round, without stalling", {
  timeout: 120_000,
}, async () => {
  const sourcePath = join(workDir, "source.raw");
  for (let round = 0; round < ROUNDS; round++) {
    const downloads = [join(workDir, "down0.raw"), join(workDir, "down1.raw")];
    await Promise.all(downloads.map((path) => rm(path, { force: true })));
    for (const name of ["up0", "up1"]) {
      await client.deleteVolume(name).catch(() => undefined);
      await client.createVolumeAndWait({ name, format: "raw", capacityBytes: SIZE });
    }
    const dog = watchdog(downloads, [join(poolDir, "up0.raw"), join(poolDir, "up1.raw")]);
    try {
      await Promise.race([
        Promise.all([
          client.downloadFile("src0", downloads[0] as string),
          client.downloadFile("src1", downloads[1] as string),
          client.uploadFile("up0", sourcePath),
          client.uploadFile("up1", sourcePath),
        ]),
        dog.stalled,
      ]);
    } finally {
      dog.stop();
    }
    for (const path of [...downloads, join(poolDir, "up0.raw"), join(poolDir, "up1.raw")]) {
      expect((await readFile(path)).equals(source), `${path} after round ${round}`).toBe(true);
    }
  }
});
