import { createRequire } from "node:module";
import path from "node:path";
import { credentials, loadPackageDefinition } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Harness, startHarness } from "./harness.js";

let h: Harness;
beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_message: string };
}

/** One request/response over grpc.reflection.v1.ServerReflection, as grpcurl would do it. */
async function reflect(request: Record<string, string>): Promise<ReflectionResponse> {
  const require = createRequire(import.meta.url);
  const root = path.join(path.dirname(require.resolve("@grpc/reflection/package.json")), "build/proto");
  const def = loadSync("grpc/reflection/v1/reflection.proto", {
    includeDirs: [root],
    keepCase: true,
    oneofs: true,
  });
  // biome-ignore lint/suspicious/noExplicitAny: a dynamically loaded service constructor.
  const pkg = loadPackageDefinition(def) as any;
  const client = new pkg.grpc.reflection.v1.ServerReflection(
    `127.0.0.1:${h.server.port}`,
    credentials.createInsecure(),
  );
  try {
    const call = client.ServerReflectionInfo();
    const response = new Promise<ReflectionResponse>((resolve, reject) => {
      call.once("data", resolve);
      call.once("error", reject);
    });
    call.write(request);
    const result = await response;
    call.end();
    return result;
  } finally {
    client.close();
  }
}

describe("server reflection", () => {
  it("lists the vdisk services and health", async () => {
    const res = await reflect({ list_services: "" });
    const names = res.list_services_response?.service.map((s) => s.name) ?? [];
    expect(names).toEqual(
      expect.arrayContaining([
        "vdisk.v1.VolumeService",
        "vdisk.v1.AllocationService",
        "vdisk.v1.DataService",
        "vdisk.v1.JobService",
      ]),
    );
  });

  it("serves the file descriptors of a service", async () => {
    const res = await reflect({ file_containing_symbol: "vdisk.v1.DataService" });
    expect(res.error_response).toBeUndefined();
    expect(res.file_descriptor_response?.file_descriptor_proto.length).toBeGreaterThan(0);
  });
});
