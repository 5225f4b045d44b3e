import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { credentials, status } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { Preallocation } from "../gen/vdisk/v1/common.js";
import { JobServiceClient, JobState } from "../gen/vdisk/v1/job.js";
import { VolumeServiceClient } from "../gen/vdisk/v1/volume.js";
import { call, createRequest, expectStatus } from "./harness.js";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const children: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** Starts `main.ts` as a separate process and resolves with the port parsed from its "listening" log line. */
function spawnServer(pool: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "server/src/main.ts", "--listen", "127.0.0.1:0", "--pool", pool],
    {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    child.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      for (const line of out.split("\n")) {
        if (!line.startsWith("{")) continue;
        try {
          const entry = JSON.parse(line) as { port?: number; msg?: string };
          if (entry.port !== undefined && entry.msg?.includes("listening"))
            resolve({ child, port: entry.port });
        } catch {
          // a partial line; wait for more
        }
      }
    });
    child.once("exit", (code) =>
      reject(new Error(`server exited (${code}) before listening:\n${out}\n${err}`)),
    );
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

describe("crash during creation", () => {
  it("after SIGKILL mid-preallocation, a restart leaves no READY volume, no temp file, and the job FAILED", async () => {
    const pool = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-crash-"));
    dirs.push(pool);
    const first = await spawnServer(pool);
    const target = `127.0.0.1:${first.port}`;
    const volumes = new VolumeServiceClient(target, credentials.createInsecure());

    // A few GiB written as zeros takes seconds, so the kill lands mid-way.
    const stream = volumes.createVolume(
      createRequest("big", {
        capacityBytes: 3n * 1024n ** 3n,
        preallocation: Preallocation.PREALLOCATION_FULL,
      }),
    );
    stream.on("error", () => {}); // the server dies under it
    let jobId = "";
    for await (const event of stream) {
      const job = (event as { job?: { id: string; state: number; progress?: { doneBytes: bigint } } }).job;
      jobId ||= job?.id ?? "";
      if (job?.state === JobState.JOB_STATE_RUNNING && (job.progress?.doneBytes ?? 0n) > 0n) break;
    }
    expect(jobId).toMatch(/^job-/);
    expect(fs.readdirSync(path.join(pool, ".vdisk", "tmp")).length).toBe(1);
    first.child.kill("SIGKILL");
    await exited(first.child);
    volumes.close();

    const second = await spawnServer(pool);
    const target2 = `127.0.0.1:${second.port}`;
    const volumes2 = new VolumeServiceClient(target2, credentials.createInsecure());
    const jobs2 = new JobServiceClient(target2, credentials.createInsecure());
    try {
      await expectStatus(call(volumes2, volumes2.getVolume, { name: "big" }), status.NOT_FOUND);
      const listed = await call(volumes2, volumes2.listVolumes, {
        pageSize: 0,
        pageToken: "",
        labelSelector: {},
      });
      expect(listed.volumes).toEqual([]);
      const { job } = await call(jobs2, jobs2.getJob, { id: jobId });
      expect(job?.state).toBe(JobState.JOB_STATE_FAILED);
      expect(job?.error?.message).toBe("server restarted during creation");
      expect(job?.endTime).toBeInstanceOf(Date);
      expect(fs.readdirSync(path.join(pool, ".vdisk", "tmp"))).toEqual([]);
      expect(fs.readdirSync(pool).filter((f) => f !== ".vdisk")).toEqual([]);
    } finally {
      volumes2.close();
      jobs2.close();
    }

    // SIGTERM drains and exits cleanly.
    second.child.kill("SIGTERM");
    expect(await exited(second.child)).toBe(0);
  }, 60_000);
});
