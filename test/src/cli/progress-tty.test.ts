import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { finalStateOf, REPO_ROOT, startTestServer, type TestServer, waitFor } from "./harness.js";

// Every CLI run is a fresh Node process (~1-3 s on a loaded 2-core machine); tests make several.
vi.setConfig({ testTimeout: 120_000 });

/**
 * Acceptance of issue 6: on a terminal, a long operation draws a progress bar (bar, percentage, bytes, rate,
 * ETA), and Ctrl-C asks whether to cancel the job or detach. The CLI runs inside tmux (a real pseudo-terminal);
 * the screen is captured with `tmux capture-pane -p`. tmux is required (Debian package `tmux`): without it
 * these tests fail, they do not skip.
 */
const exec = promisify(execFile);
// A private tmux server for this run: kill-server below ends only the sessions this test started.
const SOCKET = `vdisk-cli-test-${process.pid}`;
let t: TestServer;

async function tmux(...args: string[]): Promise<string> {
  const { stdout } = await exec("tmux", ["-L", SOCKET, ...args]);
  return stdout;
}

const screen = (session: string) => tmux("capture-pane", "-p", "-t", session);

async function screenShows(session: string, pattern: RegExp, timeoutMs = 30_000): Promise<string> {
  return waitFor(
    `${pattern} on the screen of ${session}`,
    async () => {
      const text = await screen(session);
      return pattern.test(text) ? text : undefined;
    },
    timeoutMs,
  ).catch(async (err: unknown) => {
    throw new Error(
      `${(err as Error).message}; the screen shows:\n${await screen(session).catch(() => "?")}`,
    );
  });
}

/** Starts `vdisk volume create NAME --format raw --size 8G --prealloc full` in a fresh 200x50 terminal. */
async function createInTerminal(session: string, volume: string): Promise<void> {
  const command =
    `cd ${REPO_ROOT} && ${process.execPath} --import tsx cli/src/main.ts --server 127.0.0.1:${t.port} ` +
    `volume create ${volume} --format raw --size 8G --prealloc full; echo EXIT=$?; sleep 600`;
  await tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50", command);
}

async function jobOf(volume: string) {
  for await (const job of t.client.listJobs({ volume })) return job;
  throw new Error(`no job on ${volume}`);
}

const BAR =
  /create (\S+) \[[#-]{30}\] (\d{1,3})% \| [\d.]+ (B|KiB|MiB|GiB)\/8 GiB \| [\d.]+ (B|KiB|MiB|GiB)\/s \| ETA (\d+[smh]|\d+m\d\ds|\d+h\d\dm|--)/;
const PROMPT = /Cancel the job \(c\) or detach and let it run \(d\)\?/;

beforeAll(async () => {
  await exec("tmux", ["-V"]).catch((err: unknown) => {
    throw new Error(`tmux is required for the terminal tests (Debian: apt-get install tmux): ${String(err)}`);
  });
  t = await startTestServer("tty");
});

afterAll(async () => {
  await exec("tmux", ["-L", SOCKET, "kill-server"]).catch(() => undefined);
  await t?.close();
});

describe("progress bar and Ctrl-C in a pseudo-terminal", () => {
  it("draws bar, percentage, bytes, rate and ETA; Ctrl-C then 'c' cancels the job and exits 130", async () => {
    await createInTerminal("cancel", "tty-cancel");
    const shown = await screenShows("cancel", BAR);
    const bar = BAR.exec(shown) as RegExpExecArray;
    expect(bar[1]).toBe("tty-cancel");
    expect(Number(bar[2])).toBeLessThan(100);
    expect((await jobOf("tty-cancel")).state).toBe("running");

    await tmux("send-keys", "-t", "cancel", "C-c");
    await screenShows("cancel", PROMPT);
    await tmux("send-keys", "-t", "cancel", "c", "Enter");
    const end = await screenShows("cancel", /EXIT=\d+/);
    expect(end).toMatch(/Job job-\S+ was cancelled\./);
    expect(end).toMatch(/EXIT=130/);
    const job = await jobOf("tty-cancel");
    expect(job.state).toBe("cancelled");
    expect(job.progress.doneBytes).toBeLessThan(8 * 1024 ** 3);
  });

  it("Ctrl-C then 'd' detaches: exit 0, the watch hint is printed, and the job keeps running", async () => {
    await createInTerminal("detach", "tty-detach");
    await screenShows("detach", BAR);
    await tmux("send-keys", "-t", "detach", "C-c");
    await screenShows("detach", PROMPT);
    await tmux("send-keys", "-t", "detach", "d", "Enter");
    const end = await screenShows("detach", /EXIT=\d+/);
    expect(end).toMatch(/EXIT=0/);
    const job = await jobOf("tty-detach");
    expect(end).toContain(`Detached: job ${job.id} keeps running on the server.`);
    expect(end).toContain(`vdisk job watch ${job.id}`);
    expect(job.state).toBe("running");
    // Not left to write 8 GiB on a shared machine.
    await t.client.cancelJob(job.id);
    expect(await finalStateOf(t.client, job.id)).toBe("cancelled");
  });
});
