import { create } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { createVdiskClient } from "./client.js";
import { VdiskError } from "./errors.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";
import { VolumeService } from "./gen/vdisk/v1/volume_pb.js";

function notFound(name: string): ConnectError {
  return new ConnectError(`volume "${name}" not found`, Code.NotFound, undefined, [
    {
      desc: ErrorInfoSchema,
      value: { reason: "VOLUME_NOT_FOUND", domain: "vdisk.dev", metadata: { volume: name } },
    },
  ]);
}

describe("VdiskError", () => {
  it("carries the gRPC code, ErrorInfo reason, domain and metadata of a failed call", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        getVolume(req) {
          throw notFound(req.name);
        },
      });
    });
    const client = createVdiskClient({ transport });
    const error = await client.getVolume("disk1").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VdiskError);
    expect(error).toMatchObject({
      code: "not_found",
      status: Code.NotFound,
      reason: "VOLUME_NOT_FOUND",
      domain: "vdisk.dev",
      metadata: { volume: "disk1" },
      message: 'volume "disk1" not found',
    });
  });

  it("has no reason when the server sent no ErrorInfo", () => {
    const error = VdiskError.from(new ConnectError("boom", Code.Internal));
    expect(error.code).toBe("internal");
    expect(error.reason).toBeUndefined();
    expect(error.metadata).toEqual({});
  });

  it("is built from a job's google.rpc.Status with a packed ErrorInfo", () => {
    const status = create(StatusSchema, {
      code: Code.ResourceExhausted,
      message: "pool is full",
      details: [
        anyPack(
          ErrorInfoSchema,
          create(ErrorInfoSchema, { reason: "NO_SPACE", domain: "vdisk.dev", metadata: { needed: "42" } }),
        ),
      ],
    });
    const error = VdiskError.fromStatus(status);
    expect(error).toMatchObject({
      code: "resource_exhausted",
      reason: "NO_SPACE",
      metadata: { needed: "42" },
      message: "pool is full",
    });
  });

  it("maps abort and timeout errors to canceled and deadline_exceeded", () => {
    expect(VdiskError.from(new DOMException("stop", "AbortError")).code).toBe("canceled");
    expect(VdiskError.from(new DOMException("late", "TimeoutError")).code).toBe("deadline_exceeded");
    expect(VdiskError.from("weird").code).toBe("unknown");
  });

  it("recognises errors branded by another copy of the SDK (cross-realm instanceof)", () => {
    const foreign = Object.assign(new Error("from elsewhere"), { code: "not_found" });
    Object.defineProperty(foreign, Symbol.for("@vdisk/sdk.VdiskError"), { value: true });
    expect(foreign).toBeInstanceOf(VdiskError);
    expect(new Error("plain")).not.toBeInstanceOf(VdiskError);
    expect(VdiskError.from(new VdiskError("x", { status: Code.Aborted }))).toMatchObject({ code: "aborted" });
  });
});
