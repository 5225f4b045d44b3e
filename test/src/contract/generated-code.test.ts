import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const repoRoot = join(import.meta.dirname, "..", "..", "..");
const buf = join(repoRoot, "node_modules", ".bin", "buf");
const generatedTrees = ["server/src/gen", "sdk/src/gen", "clients/python/vdisk_client/gen"];

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(relative(dir, join(entry.parentPath, entry.name)));
  }
  return out.sort();
}

describe("the contract", () => {
  const scratch = mkdtemp(join(tmpdir(), "vdisk-gen-"));
  afterAll(async () => rm(await scratch, { recursive: true, force: true }));

  it("passes buf lint", async () => {
    await expect(run(buf, ["lint"], { cwd: repoRoot })).resolves.toBeDefined();
  });

  it("has committed generated code identical to a fresh `buf generate`", async () => {
    const out = await scratch;
    await run(buf, ["generate", "-o", out], { cwd: repoRoot });
    for (const tree of generatedTrees) {
      const committed = await listFiles(join(repoRoot, tree));
      const fresh = await listFiles(join(out, tree));
      expect(fresh, `${tree}: file list differs — run npm run generate`).toEqual(committed);
      for (const file of committed) {
        const [a, b] = await Promise.all([readFile(join(repoRoot, tree, file), "utf8"), readFile(join(out, tree, file), "utf8")]);
        expect(b === a, `${tree}/${file} is stale — run npm run generate and commit`).toBe(true);
      }
    }
  });
});
