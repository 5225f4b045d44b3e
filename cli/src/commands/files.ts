import type { VolumeFormatName } from "@vdisk/sdk";
import { type Command, Option } from "commander";
import { printJson, volumeJson } from "../output.js";
import { formatSize } from "../sizes.js";
import { withClient } from "./context.js";

const FORMATS = ["raw", "qcow2", "vmdk"] as const;

export function addFileCommands(program: Command): void {
  program
    .command("upload")
    .description("write a local file's bytes into an existing volume as guest data (holes are not sent)")
    .argument("<name>", "volume name")
    .argument("<file>", "local file")
    .action(async (name: string, file: string, _opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const result = await client.uploadFile(name, file);
        if (output.json) printJson(output, { volume: name, file, ...result });
        else
          output.out(
            `Uploaded ${file} to ${name}: ${formatSize(result.writtenBytes)} written, ${formatSize(result.zeroedBytes)} as zero runs\n`,
          );
      });
    });

  program
    .command("download")
    .description("read a volume's guest data into a local sparse file")
    .argument("<name>", "volume name")
    .argument("<file>", "local file (created or overwritten)")
    .action(async (name: string, file: string, _opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const result = await client.downloadFile(name, file);
        if (output.json) printJson(output, { volume: name, file, ...result });
        else
          output.out(
            `Downloaded ${name} to ${file}: ${formatSize(result.fileBytes)} file, ${formatSize(result.dataBytes)} of data\n`,
          );
      });
    });

  program
    .command("import")
    .description("upload an image file (raw, qcow2 or vmdk bytes) as a new volume")
    .argument("<name>", "name of the new volume")
    .argument("<file>", "local image file")
    .addOption(new Option("--format <format>", "format of the file").choices(FORMATS).makeOptionMandatory())
    .addOption(new Option("--as <format>", "format to store (default: the file's)").choices(FORMATS))
    .action(async (name: string, file: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const v = await client.importFile(file, {
          name,
          format: opts.format as VolumeFormatName,
          ...(opts.as ? { targetFormat: opts.as as VolumeFormatName } : {}),
        });
        if (output.json) printJson(output, volumeJson(v));
        else
          output.out(`Imported ${file} as volume ${v.name}: ${v.format}, ${formatSize(v.capacityBytes)}\n`);
      });
    });

  program
    .command("export")
    .description("download a volume as an image file (raw exports are sparse)")
    .argument("<name>", "volume name")
    .argument("<file>", "local image file (created or overwritten)")
    .addOption(
      new Option("--format <format>", "file format to produce").choices(FORMATS).makeOptionMandatory(),
    )
    .option("--compress", "qcow2: compress clusters")
    .action(async (name: string, file: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const result = await client.exportFile(name, file, {
          format: opts.format as VolumeFormatName,
          compress: opts.compress === true,
        });
        if (output.json) printJson(output, { volume: name, file, format: opts.format, ...result });
        else output.out(`Exported ${name} to ${file} (${opts.format}): ${formatSize(result.fileBytes)}\n`);
      });
    });
}
