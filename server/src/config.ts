import path from "node:path";
import { parseArgs } from "node:util";

/** Server settings, from command-line flags first, then VDISK_* environment variables, then defaults. */
export interface ServerConfig {
  /** host:port to bind; port 0 picks a free port (the bound port is logged). */
  listen: string;
  /** Absolute path of the pool directory. */
  pool: string;
  /** Largest capacity a volume may be created or resized to, in bytes. */
  maxCapacity: number;
  logLevel: LogLevel;
  reflection: boolean;
  /** Jobs allowed to run at once; further jobs wait QUEUED. */
  maxJobs: number;
  /** PEM server certificate chain and key; both or neither. Without them the listener is plaintext. */
  tlsCert?: string | undefined;
  tlsKey?: string | undefined;
  /** PEM CA bundle: when set, clients must present a certificate issued by it (mutual TLS). */
  tlsClientCa?: string | undefined;
  /** File of bearer tokens, one per line: when set, every RPC but health needs one. */
  tokenFile?: string | undefined;
}

export type LogLevel = "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
const LOG_LEVELS: readonly LogLevel[] = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

const TIB = 1024 ** 4;
export const DEFAULTS = {
  listen: "127.0.0.1:50051",
  pool: "./data",
  maxCapacity: 256 * TIB,
  logLevel: "info" as LogLevel,
  reflection: true,
  maxJobs: 4,
};

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

export const USAGE = `Usage: vdisk-server [options]
  --listen HOST:PORT     address to serve gRPC on (VDISK_LISTEN, default ${DEFAULTS.listen})
  --pool DIR             pool directory holding the volumes (VDISK_POOL, default ${DEFAULTS.pool})
  --max-capacity SIZE    largest volume capacity, e.g. 10G, 512M, 1TiB (VDISK_MAX_CAPACITY, default 256TiB)
  --log-level LEVEL      ${LOG_LEVELS.join("|")} (VDISK_LOG_LEVEL, default info)
  --no-reflection        do not serve gRPC server reflection (VDISK_REFLECTION=0)
  --max-jobs N           jobs running at once (VDISK_MAX_JOBS, default ${DEFAULTS.maxJobs})
  --tls-cert FILE        PEM server certificate chain; serves TLS (VDISK_TLS_CERT, needs --tls-key)
  --tls-key FILE         PEM private key of --tls-cert (VDISK_TLS_KEY)
  --tls-client-ca FILE   PEM CA bundle; clients must present a certificate it issued (VDISK_TLS_CLIENT_CA)
  --token-file FILE      bearer tokens, one per line; every RPC but health needs one (VDISK_TOKEN_FILE)
  -h, --help             print this help`;

/** Returns null when help was requested (the caller prints USAGE and exits 0). Throws ConfigError on bad input. */
export function loadConfig(
  argv: readonly string[],
  env: Record<string, string | undefined> = process.env,
  cwd: string = process.cwd(),
): ServerConfig | null {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        listen: { type: "string" },
        pool: { type: "string" },
        "max-capacity": { type: "string" },
        "log-level": { type: "string" },
        reflection: { type: "boolean" },
        "no-reflection": { type: "boolean" },
        "max-jobs": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        "tls-client-ca": { type: "string" },
        "token-file": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}\n${USAGE}`);
  }
  if (values.help === true) return null;

  const pick = (flag: string, envName: string): string | undefined => {
    const v = values[flag];
    if (typeof v === "string") return v;
    const e = env[envName];
    return e === undefined || e === "" ? undefined : e;
  };

  const listen = pick("listen", "VDISK_LISTEN") ?? DEFAULTS.listen;
  parseListen(listen);

  const poolArg = pick("pool", "VDISK_POOL") ?? DEFAULTS.pool;
  const pool = path.resolve(cwd, poolArg);

  const capText = pick("max-capacity", "VDISK_MAX_CAPACITY");
  const maxCapacity = capText === undefined ? DEFAULTS.maxCapacity : parseSize(capText, "--max-capacity");
  if (maxCapacity <= 0) throw new ConfigError("--max-capacity must be greater than 0");

  const levelText = (pick("log-level", "VDISK_LOG_LEVEL") ?? DEFAULTS.logLevel).toLowerCase();
  if (!LOG_LEVELS.includes(levelText as LogLevel)) {
    throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(", ")}; got "${levelText}"`);
  }

  let reflection = DEFAULTS.reflection;
  const envReflection = env.VDISK_REFLECTION;
  if (envReflection !== undefined && envReflection !== "")
    reflection = parseBool(envReflection, "VDISK_REFLECTION");
  if (values["no-reflection"] === true) reflection = false;
  else if (values.reflection === true) reflection = true;

  const jobsText = pick("max-jobs", "VDISK_MAX_JOBS");
  const maxJobs = jobsText === undefined ? DEFAULTS.maxJobs : parsePositiveInt(jobsText, "--max-jobs", 1024);

  const file = (flag: string, envName: string) => {
    const v = pick(flag, envName);
    return v === undefined ? undefined : path.resolve(cwd, v);
  };
  const tlsCert = file("tls-cert", "VDISK_TLS_CERT");
  const tlsKey = file("tls-key", "VDISK_TLS_KEY");
  const tlsClientCa = file("tls-client-ca", "VDISK_TLS_CLIENT_CA");
  const tokenFile = file("token-file", "VDISK_TOKEN_FILE");
  if ((tlsCert === undefined) !== (tlsKey === undefined))
    throw new ConfigError("--tls-cert and --tls-key must be given together");
  if (tlsClientCa !== undefined && tlsCert === undefined)
    throw new ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS runs over TLS)");

  return {
    listen,
    pool,
    maxCapacity,
    logLevel: levelText as LogLevel,
    reflection,
    maxJobs,
    tlsCert,
    tlsKey,
    tlsClientCa,
    tokenFile,
  };
}

/** Splits HOST:PORT (IPv6 as [::1]:PORT) and validates the port. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(listen);
  if (!m)
    throw new ConfigError(`--listen must be HOST:PORT (e.g. 127.0.0.1:50051 or [::1]:0); got "${listen}"`);
  const port = Number(m[2]);
  if (port > 65535) throw new ConfigError(`--listen port must be 0–65535; got ${port}`);
  return { host: m[1] as string, port };
}

const UNIT: Record<string, number> = {
  "": 1,
  K: 1024,
  M: 1024 ** 2,
  G: 1024 ** 3,
  T: 1024 ** 4,
  P: 1024 ** 5,
  E: 1024 ** 6,
};

/**
 * Parses a size as qemu-img does: a plain byte count or a number with a binary suffix. K, KB, KiB all
 * mean 1024 (qemu-img treats "G" as GiB; operators copy sizes from it, so "GB" must not silently mean 10^9 instead).
 */
export function parseSize(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new ConfigError(`${what} must be a size like 1073741824, 512M, 10G or 1TiB; got "${text}"`);
  const unit = UNIT[(m[2] as string).toUpperCase()] as number;
  const value = Number(m[1]) * unit;
  if (!Number.isFinite(value) || value > Number.MAX_SAFE_INTEGER)
    throw new ConfigError(`${what} is too large: "${text}"`);
  if (!Number.isInteger(value))
    throw new ConfigError(`${what} must be a whole number of bytes; got "${text}"`);
  return value;
}

function parsePositiveInt(text: string, what: string, max: number): number {
  if (!/^\d+$/.test(text.trim())) throw new ConfigError(`${what} must be a positive integer; got "${text}"`);
  const n = Number(text.trim());
  if (n < 1 || n > max) throw new ConfigError(`${what} must be between 1 and ${max}; got ${n}`);
  return n;
}

function parseBool(text: string, what: string): boolean {
  const t = text.trim().toLowerCase();
  if (["1", "true", "yes", "on"].includes(t)) return true;
  if (["0", "false", "no", "off"].includes(t)) return false;
  throw new ConfigError(`${what} must be 0 or 1 (or true/false); got "${text}"`);
}
