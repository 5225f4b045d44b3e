import type { PreallocationName, VolumeFormatName } from "@vdisk/sdk";
import { type Command, Option } from "commander";
import { followJob } from "../follow-job.js";
import { checkReportText, printJson, volumeDetails, volumeJson, volumeTable } from "../output.js";
import { formatSize } from "../sizes.js";
import { labelArg, sizeArg, withClient } from "./context.js";

const FORMATS = ["raw", "qcow2", "vmdk"] as const;
const PREALLOCS = ["off", "metadata", "falloc", "full"] as const;

const formatOption = (flags: string, description: string) => new Option(flags, description).choices(FORMATS);
const preallocOption = () =>
  new Option(
    "--prealloc <mode>",
    "preallocation: off (thin), metadata, falloc or full (written zeros)",
  ).choices(PREALLOCS);

export function addVolumeCommands(program: Command): void {
  const volume = program.command("volume").description("create, inspect, change and delete volumes");

  volume
    .command("create")
    .description("create a volume (a job: progress bar on a terminal)")
    .argument("<name>", "volume name")
    .addOption(formatOption("--format <format>", "on-disk format").makeOptionMandatory())
    .requiredOption("--size <size>", "capacity, e.g. 10G, 512M, 1TiB, 4096", sizeArg)
    .addOption(preallocOption())
    .option("--allocation <size>", "preallocate only the first SIZE bytes", sizeArg)
    .option("--backing <name>", "backing volume (qcow2 overlay)")
    .option("--cluster-size <size>", "qcow2 cluster / vmdk grain size", sizeArg)
    .option("--label <key=value>", "label (repeatable)", labelArg)
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output, interactive }) => {
        const handle = client.createVolume({
          name,
          format: opts.format as VolumeFormatName,
          capacityBytes: opts.size as number,
          ...(opts.prealloc ? { preallocation: opts.prealloc as PreallocationName } : {}),
          ...(opts.allocation !== undefined ? { allocationBytes: opts.allocation as number } : {}),
          ...(opts.backing ? { backingVolume: opts.backing as string } : {}),
          ...(opts.clusterSize !== undefined ? { clusterSize: opts.clusterSize as number } : {}),
          ...(opts.label ? { labels: opts.label as Record<string, string> } : {}),
        });
        const created = await followJob(handle, { output, interactive, label: `create ${name}` });
        if (output.json) printJson(output, volumeJson(created));
        else
          output.out(
            `Created volume ${created.name}: ${created.format}, ${formatSize(created.capacityBytes)}\n`,
          );
      });
    });

  volume
    .command("list")
    .alias("ls")
    .description("list volumes")
    .option("--label <key=value>", "only volumes with this label (repeatable: all must match)", labelArg)
    .action(async (opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const volumes = [];
        for await (const v of client.listVolumes(opts.label ? { labelSelector: opts.label } : {}))
          volumes.push(v);
        if (output.json) printJson(output, volumes.map(volumeJson));
        else output.out(volumeTable(volumes));
      });
    });

  volume
    .command("get")
    .description("show one volume")
    .argument("<name>", "volume name")
    .action(async (name: string, _opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const v = await client.getVolume(name);
        if (output.json) printJson(output, volumeJson(v));
        else output.out(volumeDetails(v));
      });
    });

  volume
    .command("rm")
    .alias("delete")
    .description("delete a volume and its file")
    .argument("<name>", "volume name")
    .action(async (name: string, _opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        await client.deleteVolume(name);
        if (output.json) printJson(output, { deleted: name });
        else output.out(`Deleted volume ${name}\n`);
      });
    });

  volume
    .command("resize")
    .description("change a volume's capacity (a job)")
    .argument("<name>", "volume name")
    .requiredOption("--size <size>", "new capacity", sizeArg)
    .option("--shrink", "allow shrinking (data past the new end is lost)")
    .addOption(preallocOption())
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output, interactive }) => {
        const handle = client.resizeVolume(name, opts.size as number, {
          allowShrink: opts.shrink === true,
          ...(opts.prealloc ? { preallocation: opts.prealloc as PreallocationName } : {}),
        });
        const v = await followJob(handle, { output, interactive, label: `resize ${name}` });
        if (output.json) printJson(output, volumeJson(v));
        else output.out(`Resized volume ${v.name} to ${formatSize(v.capacityBytes)}\n`);
      });
    });

  volume
    .command("clone")
    .description("copy a volume (full, any format) or make a linked qcow2 overlay on it (a job)")
    .argument("<source>", "volume to clone")
    .argument("<name>", "name of the new volume")
    .option("--linked", "make a qcow2 overlay backed by the source instead of a full copy")
    .addOption(formatOption("--format <format>", "format of a full copy (default: the source's)"))
    .action(async (source: string, name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output, interactive }) => {
        const handle = client.cloneVolume(source, name, {
          mode: opts.linked ? "linked" : "full",
          ...(opts.format ? { format: opts.format as VolumeFormatName } : {}),
        });
        const v = await followJob(handle, { output, interactive, label: `clone ${source}` });
        if (output.json) printJson(output, volumeJson(v));
        else
          output.out(
            `Cloned ${source} to ${v.name} (${v.format}${v.backingVolume ? `, backed by ${v.backingVolume}` : ""})\n`,
          );
      });
    });

  volume
    .command("check")
    .description("check a volume's metadata, optionally repairing it (a job)")
    .argument("<name>", "volume name")
    .addOption(
      new Option("--repair <what>", "repair leaked clusters or everything").choices(["leaks", "all"]),
    )
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output, interactive }) => {
        const handle = client.checkVolume(
          name,
          opts.repair ? { repair: opts.repair as "leaks" | "all" } : {},
        );
        const report = await followJob(handle, { output, interactive, label: `check ${name}` });
        if (output.json) printJson(output, report);
        else output.out(checkReportText(report));
      });
    });

  volume
    .command("flatten")
    .description("copy up what the backing chain provides, then drop the backing link (a job)")
    .argument("<name>", "volume name")
    .option("--base <name>", "keep this volume of the chain as the new backing")
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output, interactive }) => {
        const handle = client.flattenVolume(name, opts.base ? { baseVolume: opts.base as string } : {});
        const result = await followJob(handle, { output, interactive, label: `flatten ${name}` });
        if (output.json)
          printJson(output, {
            volume: result.volume ? volumeJson(result.volume) : null,
            summary: result.summary,
          });
        else
          output.out(
            `Flattened ${name}: copied ${formatSize(result.summary.copiedBytes)}, zeroed ${formatSize(result.summary.zeroedBytes)}\n`,
          );
      });
    });
}
