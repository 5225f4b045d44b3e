import { createServer, type Http2Session, type ServerHttp2Stream } from "node:http2";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createVdiskClient } from "./client.js";
import { MiB } from "./sizes.js";

/**
 * The default transport must open HTTP/2 sessions with large receive windows (4 MiB per stream in the
 * SETTINGS frame, 32 MiB for the connection via WINDOW_UPDATE), send the bearer token, and ask for no
 * compression. A bare node:http2 server observes what the client really puts on the wire.
 */
const server = createServer();
const sessions: Http2Session[] = [];
const requests: Record<string, string | string[] | undefined>[] = [];
let baseUrl: string;

beforeAll(async () => {
  server.on("session", (session) => sessions.push(session));
  server.on("stream", (stream: ServerHttp2Stream, headers) => {
    requests.push({ ...headers });
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.on("wantTrailers", () =>
      stream.sendTrailers({ "grpc-status": "5", "grpc-message": "nothing here" }),
    );
    stream.resume();
    stream.on("end", () => stream.end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const session of sessions) session.destroy();
  await new Promise((resolve) => server.close(resolve));
});

it("opens sessions with wide windows, sends the token and refuses compression", async () => {
  const client = createVdiskClient({ baseUrl, token: "t0k3n" });
  await expect(client.getVolume("x")).rejects.toMatchObject({ code: "not_found", message: "nothing here" });
  client.close();

  expect(sessions).toHaveLength(1);
  const session = sessions[0];
  expect(session?.remoteSettings.initialWindowSize).toBe(4 * MiB);
  // Node's default connection window is 65535; ours has been raised by a WINDOW_UPDATE to 32 MiB.
  expect(session?.state.remoteWindowSize).toBeGreaterThan(16 * MiB);
  expect(requests[0]?.authorization).toBe("Bearer t0k3n");
  expect(requests[0]?.[":path"]).toBe("/vdisk.v1.VolumeService/GetVolume");
  expect(requests[0]?.["grpc-accept-encoding"] ?? "identity").not.toMatch(/gzip|br/);
});
