import {
  type Client,
  credentials,
  Metadata,
  makeGenericClientConstructor,
  Server,
  ServerCredentials,
  type ServiceDefinition,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import { EngineError } from "@vdisk/engine";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CallContext, clientStream, serverStream, unary } from "./adapt.js";
import { errorInfoOf } from "./errors.js";

// A tiny service with raw-bytes messages, served through the adapters by a real grpc-js server.
const identity = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
const method = (name: string, requestStream: boolean, responseStream: boolean) => ({
  path: `/adapt.Test/${name}`,
  requestStream,
  responseStream,
  requestSerialize: identity.serialize,
  requestDeserialize: identity.deserialize,
  responseSerialize: identity.serialize,
  responseDeserialize: identity.deserialize,
});
const definition = {
  Wait: method("Wait", false, false),
  Fail: method("Fail", false, false),
  Many: method("Many", false, true),
  Sum: method("Sum", true, false),
  Slow: method("Slow", false, true),
} as unknown as ServiceDefinition;

const seen: { reason: EngineError | undefined; produced: number } = { reason: undefined, produced: 0 };
const lastAbortReason = (): EngineError | undefined => seen.reason;
const shutdown = new AbortController();
let server: Server;
let port = 0;
let client: Client & Record<string, (...args: unknown[]) => unknown>;

function waitForAbort(ctx: CallContext): Promise<Buffer> {
  return new Promise((_, reject) => {
    ctx.signal.addEventListener("abort", () => {
      seen.reason = ctx.signal.reason as EngineError;
      reject(ctx.signal.reason);
    });
  });
}

beforeAll(async () => {
  const env = { log: pino({ level: "silent" }), shutdown: shutdown.signal };
  server = new Server();
  server.addService(definition, {
    Wait: unary(env, "Wait", async (_req: Buffer, ctx) => waitForAbort(ctx)),
    Fail: unary(env, "Fail", (req: Buffer) => {
      if (req.length === 0) throw new Error("a bug with /secret/path in it"); // synchronous throw
      return Promise.reject(new EngineError("NO_SPACE", "pool is full", { reason: "HOST_ENOSPC" }));
    }),
    Many: serverStream(env, "Many", async function* (_req: Buffer, ctx) {
      for (let i = 0; i < 10_000 && !ctx.signal.aborted; i++) {
        seen.produced = i + 1;
        yield Buffer.alloc(64 * 1024, i % 256);
      }
    }),
    Slow: serverStream(env, "Slow", async function* (_req: Buffer, ctx) {
      for (let i = 0; i < 100 && !ctx.signal.aborted; i++) {
        yield Buffer.from([i]);
        await new Promise((r) => setTimeout(r, 20));
      }
    }),
    Sum: clientStream(env, "Sum", async (requests: AsyncIterable<Buffer>) => {
      let total = 0;
      for await (const r of requests) total += r.length;
      return Buffer.from(String(total));
    }),
  });
  port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const Ctor = makeGenericClientConstructor(definition, "Test");
  client = new Ctor(`127.0.0.1:${port}`, credentials.createInsecure()) as typeof client;
});

afterAll(async () => {
  client?.close();
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, 2000);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
});

function unaryCall(name: string, req: Buffer, options: { deadline?: number } = {}) {
  const result: { call?: { cancel(): void }; done: Promise<Buffer> } = {
    done: Promise.resolve(Buffer.alloc(0)),
  };
  result.done = new Promise<Buffer>((resolve, reject) => {
    result.call = client[name]?.(req, new Metadata(), options, (err: ServiceError | null, res: Buffer) =>
      err ? reject(err) : resolve(res),
    ) as { cancel(): void };
  });
  return result;
}

async function failure(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error("expected the call to fail");
}

describe("rpc adapters", () => {
  it("aborts the handler's signal when the client cancels", async () => {
    seen.reason = undefined;
    const c = unaryCall("Wait", Buffer.from("x"));
    await new Promise((r) => setTimeout(r, 100));
    c.call?.cancel();
    expect((await failure(c.done)).code).toBe(status.CANCELLED);
    await new Promise((r) => setTimeout(r, 50));
    expect(lastAbortReason()?.code).toBe("CANCELLED");
    expect(lastAbortReason()?.reason).toBe("CLIENT_CANCELLED");
  });

  it("aborts the handler's signal at the call's deadline", async () => {
    seen.reason = undefined;
    const c = unaryCall("Wait", Buffer.from("x"), { deadline: Date.now() + 150 });
    expect((await failure(c.done)).code).toBe(status.DEADLINE_EXCEEDED);
    await new Promise((r) => setTimeout(r, 50));
    expect(lastAbortReason()?.code).toBe("DEADLINE_EXCEEDED");
  });

  it("maps rejections and synchronous throws, with ErrorInfo and without internals", async () => {
    const enospc = await failure(unaryCall("Fail", Buffer.from("x")).done);
    expect(enospc.code).toBe(status.RESOURCE_EXHAUSTED);
    const [bin] = enospc.metadata.get("grpc-status-details-bin");
    expect(errorInfoOf(bin as Buffer).info?.reason).toBe("HOST_ENOSPC");
    const bug = await failure(unaryCall("Fail", Buffer.alloc(0)).done);
    expect(bug.code).toBe(status.INTERNAL);
    expect(bug.details).not.toContain("/secret");
  });

  it("honours backpressure: a client that stops reading stops the generator", async () => {
    // A raw HTTP/2 client that never reads the response: grpc-js clients buffer received messages
    // themselves, so only a non-reading peer shows what the server does when its writes can't drain.
    const http2 = await import("node:http2");
    seen.produced = 0;
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const request = session.request({
      ":method": "POST",
      ":path": "/adapt.Test/Many",
      "content-type": "application/grpc",
      te: "trailers",
    });
    request.pause();
    const frame = Buffer.alloc(6);
    frame.writeUInt32BE(1, 1);
    request.end(frame);
    await new Promise((r) => setTimeout(r, 800));
    const atPause = seen.produced;
    await new Promise((r) => setTimeout(r, 800));
    // 10,000 × 64 KiB = 640 MiB if writes were queued; with write()→'drain' production stops at a bounded
    // point (flow-control window + grpc-js/Node stream buffers).
    expect(atPause).toBeGreaterThan(0);
    expect(seen.produced).toBe(atPause);
    expect(seen.produced).toBeLessThan(200);
    session.destroy();
  });

  it("consumes client streams by async iteration", async () => {
    const res = await new Promise<Buffer>((resolve, reject) => {
      const call = client.Sum?.(new Metadata(), {}, (err: ServiceError | null, r: Buffer) =>
        err ? reject(err) : resolve(r),
      ) as NodeJS.WritableStream;
      for (let i = 0; i < 100; i++) call.write(Buffer.alloc(1000));
      call.end();
    });
    expect(res.toString()).toBe("100000");
  });

  // Last: it fires the shared shutdown signal.
  it("ends a stream cut short by shutdown with an error, never OK", async () => {
    const stream = client.Slow?.(Buffer.from("x"), new Metadata(), {}) as NodeJS.ReadableStream;
    let received = 0;
    const outcome = new Promise<ServiceError | "ok">((resolve) => {
      stream.on("data", () => {
        received++;
        if (received === 3) shutdown.abort();
      });
      stream.on("error", (err: ServiceError) => resolve(err));
      stream.on("end", () => resolve("ok"));
    });
    const result = await outcome;
    expect(result).not.toBe("ok");
    expect((result as ServiceError).code).toBe(status.CANCELLED);
    expect(received).toBeLessThan(100);
  });
});
