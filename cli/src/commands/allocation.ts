import type { AllocateModeName } from "@vdisk/sdk";
import { type Command, Option } from "commander";
import { followJob } from "../follow-job.js";
import { printJson, table, volumeJson } from "../output.js";
import { writeQemuMap } from "../qemu-map.js";
import { formatSize } from "../sizes.js";
import { sizeArg, withClient } from "./context.js";

export function addAllocationCommands(program: Command): void {
  program
    .command("map")
    .description(
      'show the allocation map; with --json exactly `qemu-img map --output=json` (QEMU 7.2 fields: no "compressed")',
    )
    .argument("<name>", "volume name")
    .option("--offset <size>", "start of the range (default 0)", sizeArg)
    .option("--length <size>", "length of the range (default: to the end)", sizeArg)
    .option("--base <name>", "report only what lies above this volume of the chain")
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        const stream = client.getAllocationMap(name, {
          ...(opts.offset !== undefined ? { offset: opts.offset as number } : {}),
          ...(opts.length !== undefined ? { length: opts.length as number } : {}),
          ...(opts.base ? { baseVolume: opts.base as string } : {}),
        });
        if (output.json) {
          // Buffered so a failure mid-stream prints an error instead of half a JSON document.
          let text = "";
          await writeQemuMap(stream, (t) => {
            text += t;
          });
          output.out(text);
          return;
        }
        const { extents, summary } = await stream.collect();
        output.out(
          table(
            ["START", "LENGTH", "DEPTH", "PRESENT", "ZERO", "DATA", "HOST OFFSET"],
            extents.map((e) => [
              String(e.offset),
              String(e.length),
              String(e.depth),
              String(e.present),
              String(e.zero),
              String(e.data),
              e.hostOffset === undefined ? "-" : String(e.hostOffset),
            ]),
          ),
        );
        output.out(
          `data ${formatSize(summary.dataBytes)}, zero ${formatSize(summary.zeroBytes)}, unallocated ${formatSize(summary.unallocatedBytes)}, allocated in this layer ${formatSize(summary.topAllocatedBytes)}\n`,
        );
      });
    });

  program
    .command("allocate")
    .description("make a range independent of the backing chain (a job)")
    .argument("<name>", "volume name")
    .addOption(
      new Option("--mode <mode>", "copy-up (keeps holes), full (allocate everything) or metadata (qcow2)")
        .choices(["copy-up", "full", "metadata"])
        .makeOptionMandatory(),
    )
    .option("--offset <size>", "start of the range (default 0)", sizeArg)
    .option("--length <size>", "length of the range (default: to the end)", sizeArg)
    .option("--base <name>", "copy only from layers above this volume")
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output, interactive }) => {
        const handle = client.allocateRange(name, {
          mode: opts.mode as AllocateModeName,
          ...(opts.offset !== undefined ? { offset: opts.offset as number } : {}),
          ...(opts.length !== undefined ? { length: opts.length as number } : {}),
          ...(opts.base ? { baseVolume: opts.base as string } : {}),
        });
        const result = await followJob(handle, { output, interactive, label: `allocate ${name}` });
        if (output.json)
          printJson(output, {
            volume: result.volume ? volumeJson(result.volume) : null,
            summary: result.summary,
          });
        else
          output.out(
            `Allocated ${name}: copied ${formatSize(result.summary.copiedBytes)}, zeroed ${formatSize(result.summary.zeroedBytes)}, unchanged ${formatSize(result.summary.unchangedBytes)}\n`,
          );
      });
    });

  program
    .command("zero")
    .description("make a range read as zeros")
    .argument("<name>", "volume name")
    .requiredOption("--offset <size>", "start of the range", sizeArg)
    .requiredOption("--length <size>", "length of the range", sizeArg)
    .option("--unmap", "let the server free the space")
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        await client.writeZeroes(name, opts.offset as number, opts.length as number, {
          mayUnmap: opts.unmap === true,
        });
        if (output.json)
          printJson(output, { volume: name, offset: opts.offset, length: opts.length, zeroed: true });
        else output.out(`Zeroed ${formatSize(opts.length as number)} of ${name} at offset ${opts.offset}\n`);
      });
    });

  program
    .command("discard")
    .description("free a range (it then reads as zeros)")
    .argument("<name>", "volume name")
    .requiredOption("--offset <size>", "start of the range", sizeArg)
    .requiredOption("--length <size>", "length of the range", sizeArg)
    .action(async (name: string, opts, cmd: Command) => {
      await withClient(cmd, async ({ client, output }) => {
        await client.discard(name, opts.offset as number, opts.length as number);
        if (output.json)
          printJson(output, { volume: name, offset: opts.offset, length: opts.length, discarded: true });
        else
          output.out(`Discarded ${formatSize(opts.length as number)} of ${name} at offset ${opts.offset}\n`);
      });
    });
}
