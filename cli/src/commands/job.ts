import type { Command } from "commander";
import { followJob } from "../follow-job.js";
import {
  jobDetails,
  jobJson,
  jobTable,
  printJson,
  printJsonLine,
  snapshotJson,
  snapshotLine,
} from "../output.js";
import { withClient } from "./context.js";

export function addJobCommands(program: Command): void {
  const job = program.command("job").description("list, inspect, follow and cancel background jobs");

  job
    .command("list")
    .alias("ls")
    .description("list jobs, newest first")
    .option("--volume <name>", "only jobs on this volume")
    .action(async (opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const jobs = [];
        for await (const j of client.listJobs(opts.volume ? { volume: opts.volume as string } : {}))
          jobs.push(j);
        if (output.json) printJson(output, jobs.map(jobJson));
        else output.out(jobTable(jobs));
      });
    });

  job
    .command("get")
    .description("show one job")
    .argument("<id>", "job id")
    .action(async (id: string, _opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const j = await client.getJob(id);
        if (output.json) printJson(output, jobJson(j));
        else output.out(jobDetails(j));
      });
    });

  job
    .command("watch")
    .description("follow a job until it ends (--json: one JSON line per snapshot, then the final job)")
    .argument("<id>", "job id")
    .action(async (id: string, _opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output, interactive }) => {
        const handle = client.watchJob(id);
        try {
          await followJob(handle, {
            output,
            interactive,
            label: `job ${id.slice(0, 8)}`,
            onSnapshot: (s) =>
              output.json ? printJsonLine(output, snapshotJson(s)) : output.out(snapshotLine(s)),
          });
        } finally {
          // The final record (also for failed/cancelled jobs): what a script wants to keep.
          const final = await client.getJob(id).catch(() => undefined);
          if (final) {
            if (output.json) printJsonLine(output, jobJson(final));
            else if (interactive) output.out(jobDetails(final));
          }
        }
      });
    });

  job
    .command("cancel")
    .description("ask a job to stop at its next safe point")
    .argument("<id>", "job id")
    .action(async (id: string, _opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const j = await client.cancelJob(id);
        if (output.json) printJson(output, jobJson(j));
        else output.out(`Cancel requested for job ${j.id} (state: ${j.state})\n`);
      });
    });
}
