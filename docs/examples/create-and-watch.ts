// Create a thin qcow2 volume, follow the job's progress, then look at the volume.
// Run against a server: VDISK_SERVER=127.0.0.1:50051 npx tsx docs/examples/create-and-watch.ts
import { createVdiskClient, GiB } from "@vdisk/sdk";

const vdisk = createVdiskClient({ baseUrl: `http://${process.env.VDISK_SERVER ?? "127.0.0.1:50051"}` });

const create = vdisk.createVolume({ name: "example-disk", format: "qcow2", capacityBytes: 10 * GiB });
for await (const progress of create) {
  console.log(`${progress.state} ${progress.phase} ${progress.doneBytes}/${progress.totalBytes}`);
}
const volume = await create.result;
console.log(`created ${volume.name}: ${volume.capacityBytes} bytes, ${volume.physicalBytes} on disk`);

await vdisk.deleteVolume("example-disk");
vdisk.close();
