import { status } from "@grpc/grpc-js";
import { EngineError, type EngineErrorCode } from "@vdisk/engine";
import { describe, expect, it } from "vitest";
import { ENGINE_CODE_TO_STATUS, errorInfoOf, RpcError, toGrpcStatus, unimplemented } from "./errors.js";

const TABLE: [EngineErrorCode, status][] = [
  ["INVALID_ARGUMENT", status.INVALID_ARGUMENT],
  ["OUT_OF_RANGE", status.OUT_OF_RANGE],
  ["NOT_FOUND", status.NOT_FOUND],
  ["ALREADY_EXISTS", status.ALREADY_EXISTS],
  ["READ_ONLY", status.FAILED_PRECONDITION],
  ["FAILED_PRECONDITION", status.FAILED_PRECONDITION],
  ["PERMISSION", status.PERMISSION_DENIED],
  ["UNSUPPORTED", status.UNIMPLEMENTED],
  ["BUSY", status.ABORTED],
  ["NO_SPACE", status.RESOURCE_EXHAUSTED],
  ["CORRUPT", status.DATA_LOSS],
  ["FSYNC_FAILED", status.DATA_LOSS],
  ["IO", status.INTERNAL],
  ["CANCELLED", status.CANCELLED],
  ["DEADLINE_EXCEEDED", status.DEADLINE_EXCEEDED],
  ["INTERNAL", status.INTERNAL],
];

function trailerOf(s: ReturnType<typeof toGrpcStatus>) {
  const [bin] = s.metadata.get("grpc-status-details-bin");
  expect(bin).toBeInstanceOf(Buffer);
  return errorInfoOf(bin as Buffer);
}

describe("error mapping", () => {
  it("covers every engine code", () => {
    expect(Object.keys(ENGINE_CODE_TO_STATUS).sort()).toEqual(TABLE.map(([c]) => c).sort());
  });

  it.each(TABLE)("%s → gRPC %i with ErrorInfo in the trailer", (code, expected) => {
    const s = toGrpcStatus(
      new EngineError(code, 'volume "v" said no', { reason: `R_${code}`, metadata: { volume: "v" } }),
    );
    expect(s.code).toBe(expected);
    const { status: rpc, info } = trailerOf(s);
    expect(rpc.code).toBe(expected);
    expect(info?.domain).toBe("vdisk.dev");
    if (code === "INTERNAL") {
      expect(s.details).not.toContain("said no");
      expect(info?.reason).toBe("INTERNAL");
      expect(info?.metadata).toEqual({});
    } else {
      expect(s.details).toBe('volume "v" said no');
      expect(rpc.message).toBe(s.details);
      expect(info?.reason).toBe(`R_${code}`);
      expect(info?.metadata).toEqual({ volume: "v" });
    }
  });

  it("hides unknown errors and their paths", () => {
    const s = toGrpcStatus(new TypeError("cannot read /secret/pool/x.raw"));
    expect(s.code).toBe(status.INTERNAL);
    expect(s.details).not.toContain("/secret");
  });

  it("maps host errno through the engine", () => {
    const s = toGrpcStatus(
      Object.assign(new Error("ENOSPC: no space left on device, write '/pool/a.raw'"), { code: "ENOSPC" }),
    );
    expect(s.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(s.details).not.toContain("/pool");
    expect(trailerOf(s).info?.reason).toBe("HOST_ENOSPC");
  });

  it("maps abort reasons", () => {
    expect(toGrpcStatus(new DOMException("aborted", "AbortError")).code).toBe(status.CANCELLED);
    expect(toGrpcStatus(new DOMException("timed out", "TimeoutError")).code).toBe(status.DEADLINE_EXCEEDED);
  });

  it("passes RPC-layer errors through", () => {
    const s = toGrpcStatus(unimplemented("ResizeVolume", "issue 4: jobs"));
    expect(s.code).toBe(status.UNIMPLEMENTED);
    expect(s.details).toBe("ResizeVolume is not implemented yet (issue 4: jobs)");
    expect(trailerOf(s).info).toMatchObject({ reason: "NOT_IMPLEMENTED", metadata: { rpc: "ResizeVolume" } });
    expect(toGrpcStatus(new RpcError(status.UNAVAILABLE, "draining", "DRAINING")).code).toBe(
      status.UNAVAILABLE,
    );
  });
});
