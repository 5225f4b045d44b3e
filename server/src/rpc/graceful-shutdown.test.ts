import http2 from "node:http2";
import {
  Client,
  credentials,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type sendUnaryData,
} from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { drainGrpcServer, listHttp2Servers } from "./graceful-shutdown.js";

const identity = (b: Buffer) => b;
const WAIT = {
  wait: {
    path: "/test.Drain/Wait",
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A grpc-js server whose one method answers after `answerAfterMs` (never, if undefined). */
async function startServer(answerAfterMs: number | undefined): Promise<{ server: Server; port: number }> {
  const server = new Server();
  server.addService(WAIT, {
    wait(_call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) {
      if (answerAfterMs !== undefined) setTimeout(() => callback(null, Buffer.from("ok")), answerAfterMs);
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  cleanups.push(() => server.forceShutdown());
  return { server, port };
}

function callWait(port: number): Promise<string> {
  const client = new Client(`127.0.0.1:${port}`, credentials.createInsecure());
  cleanups.push(() => client.close());
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest("/test.Drain/Wait", identity, identity, Buffer.alloc(0), (err, value) =>
      err ? reject(err) : resolve(String(value)),
    ),
  );
}

describe("drainGrpcServer", () => {
  it("finishes when the drain starts while a dropped client's session is destroyed but not yet closed", async () => {
    const { server, port } = await startServer(0);
    const [h2] = listHttp2Servers(server);
    expect(h2).toBeDefined();
    const serverSession = new Promise<http2.ServerHttp2Session>((resolve) =>
      h2?.once("session", (s: http2.ServerHttp2Session) => resolve(s)),
    );
    const client = http2.connect(`http://127.0.0.1:${port}`);
    cleanups.push(() => client.destroy());
    const session = await serverSession;
    // The state a client closing its connection right before SIGTERM leaves behind: grpc-js's tryShutdown
    // alone calls session.close(cb) here, which Node ignores (cb never runs), and waits forever.
    session.destroy();
    expect(session.destroyed && !session.closed).toBe(true);

    const started = Date.now();
    await expect(drainGrpcServer(server, 5_000)).resolves.toBe("drained");
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("lets a call in flight finish before it reports the server drained", async () => {
    const { server, port } = await startServer(300);
    const answer = callWait(port);
    // The call is running once the server has a session with an open stream.
    await new Promise((r) => setTimeout(r, 100));
    const drained = drainGrpcServer(server, 5_000);
    await expect(answer).resolves.toBe("ok");
    await expect(drained).resolves.toBe("drained");
  });

  it("forces the server down when a call does not finish in time", async () => {
    const { server, port } = await startServer(undefined);
    const answer = callWait(port).catch((err: unknown) => err);
    await new Promise((r) => setTimeout(r, 100));
    await expect(drainGrpcServer(server, 200)).resolves.toBe("forced");
    expect(await answer).toBeInstanceOf(Error);
  });
});
