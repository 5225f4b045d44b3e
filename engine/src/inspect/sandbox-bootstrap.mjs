// Plain-JS entry for the inspection worker, so it loads the same way under vitest, `node --import tsx`
// and compiled JavaScript: a .ts worker entry needs tsx's loader registered inside the worker itself
// (Node does not apply a parent's --import hooks to a worker's entry module).
import { workerData } from "node:worker_threads";

if (workerData.entry.endsWith(".ts")) {
  const { register } = await import("tsx/esm/api");
  register();
}
await import(workerData.entry);
