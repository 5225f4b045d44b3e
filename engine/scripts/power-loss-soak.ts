/**
 * Power-loss soak (reliability.md T2, heavy variant of engine/src/testing/power-loss.test.ts).
 *
 *   npx tsx engine/scripts/power-loss-soak.ts --iterations 10000 --seed 1 [--variant qcow2-v3] [--no-qemu]
 *
 * Runs `iterations` simulated power losses round-robin over the variants (qcow2 v2/v3/lazy refcounts/
 * 512-byte clusters, vmdk monolithicSparse), each from seed `seed + i`, and prints every failing case
 * with the seed that replays it. Exit code 1 if any case lost data or left corruption.
 */
import { removeScratch } from "../src/testing/images.js";
import { POWER_LOSS_VARIANTS, powerLossIteration } from "../src/testing/power-loss-run.js";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return (i >= 0 ? process.argv[i + 1] : undefined) ?? fallback;
}

const iterations = Number(arg("iterations", "1000"));
const seed = Number(arg("seed", "1"));
const only = arg("variant", "");
const qemu = !process.argv.includes("--no-qemu");
const variants = POWER_LOSS_VARIANTS.filter((v) => only === "" || v.name === only);
if (
  !Number.isSafeInteger(iterations) ||
  iterations < 1 ||
  !Number.isSafeInteger(seed) ||
  variants.length === 0
) {
  console.error("usage: power-loss-soak.ts --iterations N --seed S [--variant NAME] [--no-qemu]");
  process.exit(2);
}

let failures = 0;
const started = Date.now();
try {
  for (let i = 0; i < iterations; i++) {
    const v = variants[i % variants.length] ?? POWER_LOSS_VARIANTS[0];
    if (v === undefined) break;
    const r = await powerLossIteration(v, seed + i, { qemu: qemu && i % 3 === 0 });
    if (r.problems.length > 0) {
      failures++;
      console.log(
        `FAIL ${r.variant} seed=${r.seed} mode=${r.mode} cut=${r.cutAfter}: ${r.problems.join(" | ")}`,
      );
    }
    if ((i + 1) % 500 === 0)
      console.log(
        `${i + 1}/${iterations} done, ${failures} failures, ${Math.round((Date.now() - started) / 1000)} s`,
      );
  }
} finally {
  removeScratch();
}
console.log(`${iterations} iterations, ${failures} failures`);
process.exit(failures > 0 ? 1 : 0);
