import { readFileSync } from "node:fs";
import os from "node:os";
import { runQuiet } from "./util/proc.js";

/** The machine a result was measured on, recorded beside the numbers. */
export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryBytes: number;
  kernel: string;
  fileSystem: string;
  node: string;
  qemuImg: string;
  grpcJs: string;
  commit: string;
  date: string;
}

function tryRun(argv: string[], fallback = "unknown"): string {
  try {
    return runQuiet(argv).trim();
  } catch {
    return fallback;
  }
}

export function describeMachine(workDir: string, repoRoot: string): MachineInfo {
  const cpus = os.cpus();
  // df -T: device, type, size; for the directory the bench writes into (the pool lives there too).
  const df = tryRun(["df", "-T", "-h", workDir]).split("\n")[1]?.split(/\s+/) ?? [];
  let grpcJs = "unknown";
  try {
    grpcJs = (
      JSON.parse(readFileSync(`${repoRoot}/node_modules/@grpc/grpc-js/package.json`, "utf8")) as {
        version: string;
      }
    ).version;
  } catch {
    // not installed where expected
  }
  return {
    cpuModel: cpus[0]?.model ?? "unknown",
    cores: cpus.length,
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    fileSystem: df.length >= 3 ? `${df[1]} on ${df[0]} (${df[2]})` : "unknown",
    node: process.version,
    qemuImg: tryRun(["qemu-img", "--version"]).split("\n")[0] ?? "unknown",
    grpcJs,
    commit:
      tryRun(["git", "-C", repoRoot, "rev-parse", "--short", "HEAD"]) +
      (tryRun(
        [
          "git",
          "-C",
          repoRoot,
          "status",
          "--porcelain",
          "--untracked-files=no",
          "--",
          ".",
          ":!bench/results",
        ],
        "",
      ) === ""
        ? ""
        : "+dirty"),
    date: new Date().toISOString(),
  };
}
