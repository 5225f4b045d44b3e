import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { judgeBars } from "./bars.js";
import { describeMachine } from "./machine.js";
import { parseOptions, USAGE } from "./options.js";
import { type BenchReport, renderMarkdown } from "./report.js";
import { runWorkload, type WorkloadResult } from "./runner.js";
import { REPO_ROOT, startServerProcess } from "./server-process.js";
import { allWorkloads, selectWorkloads } from "./workloads/index.js";

async function main(): Promise<void> {
  const benchRoot = path.join(REPO_ROOT, "bench");
  let options: ReturnType<typeof parseOptions>;
  try {
    options = parseOptions(process.argv.slice(2), benchRoot);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n${USAGE}\n`);
    process.exit(2);
  }
  const workloads = selectWorkloads(
    allWorkloads(() => options.peerCache),
    options.only,
  );
  if (options.list) {
    for (const w of workloads) process.stdout.write(`${w.name.padEnd(20)} ${w.title}\n    peer: ${w.peer}\n`);
    return;
  }
  const log = (message: string) => process.stderr.write(`${message}\n`);
  const started = process.hrtime.bigint();
  await mkdir(options.workDir, { recursive: true });
  // A fresh pool per suite run: the server's catalog starts empty and nothing from an older run leaks in.
  const poolDir = path.join(options.workDir, `pool-${process.pid}`);
  await rm(poolDir, { recursive: true, force: true });
  await mkdir(poolDir, { recursive: true });
  log(
    `vdisk bench: scale ${options.scale}, ${options.warmup} warm-up + ${options.pairs} rounds, cache ${options.cache}, work dir ${options.workDir}`,
  );
  const server = await startServerProcess(poolDir);
  log(`server pid ${server.pid} on 127.0.0.1:${server.port}`);
  const results: WorkloadResult[] = [];
  try {
    const ctx = {
      scale: options.scale,
      workDir: options.workDir,
      poolDir,
      client: server.client,
      serverPid: server.pid,
      log,
    };
    for (const workload of workloads) {
      log(`${workload.name}: ${workload.title}`);
      const result = await runWorkload(workload, ctx, options);
      if (result.error !== undefined) log(`  set-up failed: ${result.error}`);
      results.push(result);
    }
  } finally {
    await server.stop();
    await rm(poolDir, { recursive: true, force: true });
  }
  const report: BenchReport = {
    machine: describeMachine(options.workDir, REPO_ROOT),
    settings: {
      scale: options.scale,
      pairs: options.pairs,
      warmup: options.warmup,
      cache: options.cache,
      peerCache: options.peerCache,
      workDir: options.workDir,
    },
    results,
    bars: judgeBars(results),
    suiteSeconds: Number(process.hrtime.bigint() - started) / 1e9,
  };
  await mkdir(options.outDir, { recursive: true });
  await writeFile(path.join(options.outDir, "latest.json"), `${JSON.stringify(report, null, 2)}\n`);
  const markdown = renderMarkdown(report);
  await writeFile(path.join(options.outDir, "latest.md"), markdown);
  process.stdout.write(markdown);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
