import { parseArgs } from "node:util";
import { CRASH_FORMATS, type CrashFormat, runCrashLoop } from "./loop.js";

/**
 * `npm run crash-loop -- --iterations 10000 --seed 1 --format qcow2-v3` — the long kill -9 loop
 * (docs/operations.md, "Crash loop"). Without --format every format runs, one after the other.
 * Exit 0 when every iteration kept "nothing lost"; 1 with format, seed and iteration otherwise.
 */
const USAGE = `usage: npm run crash-loop -- [--iterations N] [--seed S] [--format ${CRASH_FORMATS.join("|")}] [--work-dir DIR] [--launch bundle|tsx] [--quiet]`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      iterations: { type: "string", default: "100" },
      seed: { type: "string", default: "1" },
      format: { type: "string", multiple: true },
      "work-dir": { type: "string" },
      launch: { type: "string", default: "bundle" },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const iterations = Number(values.iterations);
  const seed = Number(values.seed);
  const formats = (values.format ?? [...CRASH_FORMATS]) as CrashFormat[];
  const launch = values.launch;
  if (
    !Number.isSafeInteger(iterations) ||
    iterations < 1 ||
    !Number.isSafeInteger(seed) ||
    formats.some((f) => !CRASH_FORMATS.includes(f)) ||
    (launch !== "bundle" && launch !== "tsx")
  ) {
    console.error(USAGE);
    return 2;
  }
  for (const format of formats) {
    const started = Date.now();
    const report = await runCrashLoop({
      format,
      seed,
      iterations,
      launch,
      ...(values["work-dir"] ? { workDir: `${values["work-dir"]}/${format}-${seed}` } : {}),
      ...(values.quiet ? {} : { log: (line: string) => console.log(line) }),
    });
    console.log(
      `${format} seed ${seed}: ${report.kills} kills, ${report.ops} ops, ${report.jobs} jobs, ` +
        `${report.dirtyReopens} dirty reopens repaired, ${report.leaks} leaked clusters repaired, ` +
        `${report.ambiguousOps} ops in flight at kills; per iteration ${report.ms.iteration} ms ` +
        `(restart ${report.ms.restart}, workload ${report.ms.workload}, verify ${report.ms.verify}); ` +
        `total ${Math.round((Date.now() - started) / 1000)} s`,
    );
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : String(err));
    process.exit(1);
  },
);
