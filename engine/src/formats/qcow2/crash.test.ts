import { spawn } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createImage, openImage, qemu, requireQemu, slotWrite } from "./oracle-support.js";

const dir = join("/tmp", `vdisk-qcow2-crash-${process.pid}`);
const fixture = fileURLToPath(new URL("./crash-writer.fixture.ts", import.meta.url));
const repoRoot = fileURLToPath(new URL("../../../../", import.meta.url));

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs the writer and SIGKILLs it once `killAfterAcks` flushes were acknowledged; returns the last acked write. */
function runAndKill(path: string, clusterSize: number, killAfterAcks: number): Promise<number> {
  return new Promise((resolve, reject) => {
    // node itself runs the writer (the tsx CLI would fork a grandchild that a SIGKILL never reaches).
    const child = spawn(process.execPath, ["--import", "tsx", fixture, path, String(clusterSize)], {
      cwd: repoRoot,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let acked = -1;
    let acks = 0;
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.stdout.on("data", (d: Buffer) => {
      for (const line of d.toString().split("\n")) {
        const m = /^acked (\d+)$/.exec(line);
        if (!m) continue;
        acked = Number(m[1]);
        if (++acks === killAfterAcks) child.kill("SIGKILL");
      }
    });
    child.on("exit", (_code, signal) => {
      if (signal === "SIGKILL") resolve(acked);
      else reject(new Error(`writer ended without being killed: ${stderr.slice(0, 500)}`));
    });
  });
}

describe("kill -9 while writing", () => {
  for (const lazy of [false, true]) {
    it(`leaves only leaks and keeps acknowledged writes (lazy refcounts ${lazy ? "on" : "off"})`, async () => {
      const cs = 4096;
      const path = join(dir, `crash-${lazy}.qcow2`);
      const img = await createImage(path, {
        size: 32 << 20,
        prealloc: "off",
        clusterSize: cs,
        qcow2: { lazyRefcounts: lazy },
      });
      await img.close();
      for (const killAfter of [3, 9]) {
        const acked = await runAndKill(path, cs, killAfter);
        expect(acked).toBeGreaterThanOrEqual(0);
        const info = JSON.parse(
          qemu("qemu-img", ["info", "-U", "--output=json", "-f", "qcow2", path]).stdout,
        ) as {
          "dirty-flag"?: boolean;
        };
        expect(info["dirty-flag"] === true).toBe(lazy); // lazy refcounts: killed mid-write leaves the dirty bit
        const check = qemu("qemu-img", ["check", "--output=json", "-f", "qcow2", path]);
        if (!lazy) expect([0, 3]).toContain(check.code);
        const reopened = await openImage(path, false); // a dirty image is repaired here
        expect(reopened.details().qcow2?.dirty).toBe(false);
        for (let i = 0; i <= acked; i++) {
          const w = slotWrite(i, cs, reopened.virtualSize);
          if (!w) break;
          const back = Buffer.alloc(w.data.length);
          await reopened.read(w.offset, back);
          expect(back.equals(w.data)).toBe(true);
        }
        const repaired = await reopened.check({ repair: "leaks" });
        expect({ corruptions: repaired.corruptions, leaks: repaired.leaks }).toEqual({
          corruptions: 0,
          leaks: 0,
        });
        await reopened.close();
        expect(qemu("qemu-img", ["check", "-f", "qcow2", path]).code).toBe(0);
      }
    });
  }
});
