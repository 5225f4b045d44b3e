// Write into a volume, then stream its allocation map (qemu-img map semantics) and read it back sparsely.
// Run against a server: VDISK_SERVER=127.0.0.1:50051 npx tsx docs/examples/allocation-map.ts
import { createVdiskClient, MiB } from "@vdisk/sdk";

const vdisk = createVdiskClient({ baseUrl: `http://${process.env.VDISK_SERVER ?? "127.0.0.1:50051"}` });

await vdisk.createVolume({ name: "example-map", format: "raw", capacityBytes: 64 * MiB }).result;
await vdisk.writeVolume("example-map", [
  { offset: 8 * MiB, data: new Uint8Array(MiB).fill(7) },
  { flush: true },
]);

const map = vdisk.getAllocationMap("example-map");
for await (const extent of map) {
  console.log(`${extent.offset}+${extent.length} ${extent.data ? "data" : "zero"} depth=${extent.depth}`);
}
console.log("summary", await map.summary);

let bytes = 0;
for await (const piece of vdisk.readVolume("example-map", { sparse: true })) {
  if ("data" in piece) bytes += piece.data.length;
}
console.log(`read ${bytes} bytes of data; the rest came as zero runs`);

await vdisk.deleteVolume("example-map");
vdisk.close();
