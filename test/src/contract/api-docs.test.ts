import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect, it } from "vitest";

const run = promisify(execFile);
const repoRoot = join(import.meta.dirname, "..", "..", "..");

it("docs/api.md is up to date with the proto comments", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vdisk-docs-"));
  try {
    const fresh = join(dir, "api.md");
    await run(join(repoRoot, "node_modules/.bin/tsx"), [join(repoRoot, "scripts/gen-api-docs.ts"), fresh], { cwd: repoRoot });
    const [a, b] = await Promise.all([readFile(join(repoRoot, "docs/api.md"), "utf8"), readFile(fresh, "utf8")]);
    expect(b === a, "docs/api.md is stale — run npm run docs:api and commit").toBe(true);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
