// Start a long job (full preallocation) and cancel it through an AbortSignal: the job ends CANCELLED
// and nothing is left behind. Run against a server: VDISK_SERVER=127.0.0.1:50051 npx tsx docs/examples/cancel-a-job.ts
import { createVdiskClient, GiB, VdiskError } from "@vdisk/sdk";

const vdisk = createVdiskClient({ baseUrl: `http://${process.env.VDISK_SERVER ?? "127.0.0.1:50051"}` });
const abort = new AbortController();

const create = vdisk.createVolume(
  { name: "example-cancel", format: "raw", capacityBytes: 8 * GiB, preallocation: "full" },
  { signal: abort.signal },
);
try {
  for await (const progress of create) {
    if (progress.doneBytes > 0) abort.abort(); // cancel as soon as work has started
  }
  await create.result;
} catch (err) {
  // Both the progress iteration and .result reject with the cancellation.
  if (err instanceof VdiskError) console.log(`job ended: ${err.code}`); // "canceled"
}
// Aborting returns at once; the server stops the job at its next safe point and removes what it made.
// Follow the job to its terminal state before looking.
const final = await vdisk.getJob(await create.jobId);
let state = final.state;
for await (const snapshot of vdisk.watchJob(final.id)) state = snapshot.state;
console.log(`final state: ${state}`);
const exists = await vdisk.getVolume("example-cancel").then(
  () => true,
  () => false,
);
console.log(`volume left behind: ${exists}`);
vdisk.close();
