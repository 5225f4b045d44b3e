/**
 * Mutation fuzzer for the qcow2 and vmdk drivers (the heavy variant of engine/src/testing/fuzz.test.ts).
 *
 *   npx tsx engine/scripts/fuzz.ts --cases 200000 --seed 1 [--case-ms 2000]
 *
 * Builds the seed corpus with qemu-img (needs qemu-utils), runs `cases` seeded mutation cases and prints
 * each finding with its seed image, case seed and mutations (enough to replay it with `mutate`).
 * Exit code 1 if anything was found.
 */
import { buildSeeds, DEFAULT_LIMITS, fuzz } from "../src/testing/fuzz.js";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return (i >= 0 ? process.argv[i + 1] : undefined) ?? fallback;
}

const cases = Number(arg("cases", "20000"));
const seed = Number(arg("seed", "1"));
const caseMillis = Number(arg("case-ms", String(DEFAULT_LIMITS.caseMillis)));
if (!Number.isSafeInteger(cases) || cases < 1 || !Number.isSafeInteger(seed)) {
  console.error("usage: fuzz.ts --cases N --seed S [--case-ms MS]");
  process.exit(2);
}
const started = Date.now();
const report = await fuzz(buildSeeds(), {
  cases,
  baseSeed: seed,
  limits: { ...DEFAULT_LIMITS, caseMillis },
  maxFindings: 1000,
});
for (const f of report.findings)
  console.log(`FINDING ${f.seed} case=${f.caseSeed} [${f.mutations.join("; ")}]: ${f.problem}`);
console.log(
  `${report.cases} cases in ${Math.round((Date.now() - started) / 1000)} s, ${report.findings.length} findings, ${report.opened} opened, ` +
    `slowest case ${Math.round(report.slowestMillis)} ms, peak RSS growth ${Math.round(report.peakRssGrowth / 2 ** 20)} MiB`,
);
process.exit(report.findings.length > 0 ? 1 : 0);
