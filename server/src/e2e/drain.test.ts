import { credentials, loadPackageDefinition } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { protoPath } from "grpc-health-check";
import { describe, expect, it } from "vitest";
import { createVolume, startHarness } from "./harness.js";

describe("graceful drain", () => {
  it("reports NOT_SERVING to health watchers, then stops", async () => {
    const h = await startHarness();
    await createVolume(h, "kept");
    const def = loadSync(protoPath, { keepCase: true, enums: String });
    // biome-ignore lint/suspicious/noExplicitAny: a dynamically loaded service constructor.
    const pkg = loadPackageDefinition(def) as any;
    const client = new pkg.grpc.health.v1.Health(`127.0.0.1:${h.server.port}`, credentials.createInsecure());
    const watch = client.watch({ service: "vdisk.v1.VolumeService" });
    watch.on("error", () => {});
    const statuses: string[] = [];
    let watching: () => void = () => {};
    const serving = new Promise<void>((resolve) => {
      watching = resolve;
    });
    const notServing = new Promise<void>((resolve) => {
      watch.on("data", (m: { status: string }) => {
        statuses.push(m.status);
        if (m.status === "SERVING") watching();
        if (m.status === "NOT_SERVING") resolve();
      });
    });
    // The watch must be established before the drain starts (a fixed delay is too short on a loaded machine:
    // a watch that only reaches the server after GOAWAY is refused and never sees NOT_SERVING).
    await serving;
    const closed = h.stop();
    await notServing;
    await closed;
    client.close();
    expect(statuses).toEqual(["SERVING", "NOT_SERVING"]);
  });
});
