import path from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError, DEFAULTS, loadConfig, parseListen, parseSize } from "./config.js";

const GIB = 1024 ** 3;

describe("loadConfig", () => {
  it("uses defaults", () => {
    const c = loadConfig([], {}, "/srv");
    expect(c).toEqual({
      listen: "127.0.0.1:50051",
      pool: "/srv/data",
      maxCapacity: 256 * 1024 ** 4,
      logLevel: "info",
      reflection: true,
      maxJobs: DEFAULTS.maxJobs,
    });
  });

  it("reads flags before environment", () => {
    const c = loadConfig(
      [
        "--listen",
        "0.0.0.0:7000",
        "--pool",
        "p",
        "--max-capacity",
        "10G",
        "--log-level",
        "debug",
        "--no-reflection",
        "--max-jobs",
        "2",
      ],
      { VDISK_LISTEN: "127.0.0.1:1", VDISK_POOL: "/other", VDISK_MAX_CAPACITY: "1M" },
      "/srv",
    );
    expect(c).toMatchObject({
      listen: "0.0.0.0:7000",
      pool: path.resolve("/srv/p"),
      maxCapacity: 10 * GIB,
      logLevel: "debug",
      reflection: false,
      maxJobs: 2,
    });
  });

  it("reads environment", () => {
    const c = loadConfig(
      [],
      {
        VDISK_LISTEN: "[::1]:0",
        VDISK_POOL: "/pool",
        VDISK_MAX_CAPACITY: "1TiB",
        VDISK_REFLECTION: "0",
        VDISK_MAX_JOBS: "8",
      },
      "/",
    );
    expect(c).toMatchObject({
      listen: "[::1]:0",
      pool: "/pool",
      maxCapacity: 1024 ** 4,
      reflection: false,
      maxJobs: 8,
    });
  });

  it("returns null for --help", () => {
    expect(loadConfig(["--help"], {})).toBeNull();
  });

  it.each([
    [["--listen", "nope"], "HOST:PORT"],
    [["--listen", "a:70000"], "0–65535"],
    [["--max-capacity", "12X"], "size like"],
    [["--max-capacity", "0"], "greater than 0"],
    [["--log-level", "loud"], "one of"],
    [["--max-jobs", "0"], "between 1"],
    [["--max-jobs", "x"], "positive integer"],
    [["--bogus"], "Unknown option"],
  ])("rejects %j", (argv, message) => {
    expect(() => loadConfig(argv, {})).toThrow(ConfigError);
    expect(() => loadConfig(argv, {})).toThrow(message);
  });

  it("rejects a bad VDISK_REFLECTION", () => {
    expect(() => loadConfig([], { VDISK_REFLECTION: "maybe" })).toThrow("VDISK_REFLECTION");
  });
});

describe("parseSize", () => {
  it.each([
    ["1073741824", GIB],
    ["512M", 512 * 1024 ** 2],
    ["10G", 10 * GIB],
    ["10g", 10 * GIB],
    ["1TiB", 1024 ** 4],
    ["1.5G", 1.5 * GIB],
    ["4KB", 4096],
  ])("%s", (text, bytes) => {
    expect(parseSize(text, "size")).toBe(bytes);
  });

  it("rejects fractions of a byte and huge values", () => {
    expect(() => parseSize("1.5", "size")).toThrow("whole number");
    expect(() => parseSize("100E", "size")).toThrow("too large");
  });
});

describe("parseListen", () => {
  it("splits host and port", () => {
    expect(parseListen("127.0.0.1:0")).toEqual({ host: "127.0.0.1", port: 0 });
    expect(parseListen("[::1]:50051")).toEqual({ host: "[::1]", port: 50051 });
  });
});

describe("TLS and token flags", () => {
  it("reads certificate, key, client CA and token file from flags or env, resolved against cwd", () => {
    const fromFlags = loadConfig(
      ["--tls-cert", "s.pem", "--tls-key", "s.key", "--tls-client-ca", "ca.pem", "--token-file", "tokens"],
      {},
      "/etc/vdisk",
    );
    expect(fromFlags).toMatchObject({
      tlsCert: "/etc/vdisk/s.pem",
      tlsKey: "/etc/vdisk/s.key",
      tlsClientCa: "/etc/vdisk/ca.pem",
      tokenFile: "/etc/vdisk/tokens",
    });
    const fromEnv = loadConfig(
      [],
      { VDISK_TLS_CERT: "/a.pem", VDISK_TLS_KEY: "/a.key", VDISK_TOKEN_FILE: "/t" },
      "/",
    );
    expect(fromEnv).toMatchObject({ tlsCert: "/a.pem", tlsKey: "/a.key", tokenFile: "/t" });
    expect(fromEnv?.tlsClientCa).toBeUndefined();
  });

  it("refuses a certificate without its key, and a client CA without a server certificate", () => {
    expect(() => loadConfig(["--tls-cert", "s.pem"], {}, "/")).toThrow(/together/);
    expect(() => loadConfig(["--tls-client-ca", "ca.pem"], {}, "/")).toThrow(/needs --tls-cert/);
  });
});
