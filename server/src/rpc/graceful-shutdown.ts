import type { Http2Server } from "node:http2";
import type { Server } from "@grpc/grpc-js";

export type DrainOutcome = "drained" | "forced";

/**
 * grpc-js's tryShutdown, made to finish. tryShutdown closes every HTTP/2 session with session.close(cb)
 * and waits for each cb. Node's Http2Session.close() returns at once, without ever calling cb, when the
 * session is already destroyed but its 'close' event has not fired yet — which is exactly the state of a
 * session whose client dropped the connection just before the drain (a control plane closing its client
 * and then sending SIGTERM). tryShutdown then waits forever on a session that is long gone.
 *
 * So the drain also ends when every HTTP/2 server of the gRPC server has emitted 'close': Node emits it
 * once the listener is closed and every connection has ended, which is what tryShutdown waits for anyway
 * (a session with a call still running keeps its connection, so calls still get to finish). After
 * `timeoutMs` the server is forced down, as before.
 */
export function drainGrpcServer(server: Server, timeoutMs: number): Promise<DrainOutcome> {
  return new Promise<DrainOutcome>((resolve) => {
    let settled = false;
    const finish = (outcome: DrainOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      server.forceShutdown();
      finish("forced");
    }, timeoutMs);

    // Read before tryShutdown: it removes each HTTP/2 server from its map as that server closes.
    const http2Servers = listHttp2Servers(server);
    server.tryShutdown(() => finish("drained"));
    if (http2Servers.length > 0) {
      void Promise.all(http2Servers.map(whenClosed)).then(() => finish("drained"));
    }
  });
}

/** grpc-js keeps its Node HTTP/2 servers in the private map `http2Servers`; [] if its shape changed. */
export function listHttp2Servers(server: Server): Http2Server[] {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map)) return [];
  const found: Http2Server[] = [];
  for (const candidate of servers.keys()) {
    const h2 = candidate as Partial<Http2Server>;
    // Only listening servers will emit 'close' when tryShutdown closes them.
    if (typeof h2.once === "function" && h2.listening === true) found.push(candidate as Http2Server);
  }
  return found;
}

function whenClosed(h2: Http2Server): Promise<void> {
  return new Promise<void>((resolve) => {
    h2.once("close", () => resolve());
  });
}
