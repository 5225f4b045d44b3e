import { expect, test } from "vitest";
import { vmdkDriver } from "./index.js";
import { layerMap, makeScratchDir, openFile, pattern, qemuImg, qemuMap } from "./vmdk-test-helpers.js";

test("smoke", async () => {
  const s = makeScratchDir();
  const p = s.path("a.vmdk");
  const f = await openFile(p, "create");
  await vmdkDriver.create(f, { size: 3 * 1024 * 1024, prealloc: "off", vmdk: { zeroedGrain: true } });
  const img = await vmdkDriver.open(f, { readOnly: false });
  await img.write(65536, pattern(4096, 1));
  await img.writeZeroes(1024 * 1024, 65536);
  await img.write(1088 * 1024, pattern(131072, 2));
  const back = new Uint8Array(4096);
  await img.read(65536, back);
  expect(back).toEqual(pattern(4096, 1));
  const ours = await layerMap(img);
  await img.close();
  console.log(qemuImg(["check", p]));
  console.log(JSON.stringify(ours), JSON.stringify(qemuMap(p)));
  expect(ours).toEqual(qemuMap(p));
});
