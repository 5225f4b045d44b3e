/**
 * Test fixture program for kill -9 tests: writes to disjoint slots of an existing qcow2 image and
 * reports each flushed write on stdout ("acked N": writes 0..N are durable). Usage:
 *   node --import tsx crash-writer.fixture.ts <image> <clusterSize>
 */
import { openHostFile } from "../../host/node-file.js";
import { qcow2Driver } from "./index.js";
import { slotWrite } from "./oracle-support.js";

const [path, clusterSizeArg] = process.argv.slice(2);
if (!path || !clusterSizeArg) throw new Error("usage: crash-writer.fixture.ts <image> <clusterSize>");
const clusterSize = Number(clusterSizeArg);
const img = await qcow2Driver.open(await openHostFile(path, { readOnly: false }), { readOnly: false });
for (let i = 0; ; i++) {
  const w = slotWrite(i, clusterSize, img.virtualSize);
  if (!w) break;
  await img.write(w.offset, w.data);
  if (i % 4 === 3) {
    await img.flush();
    process.stdout.write(`acked ${i}\n`);
  }
}
await img.close();
process.stdout.write("done\n");
