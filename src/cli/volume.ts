import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import {
  assertId,
  Operation,
  WorkflowType,
  type VolumeExportInput,
  type VolumeExportResult,
  type VolumeImportInput,
  type VolumeImportResult,
} from '../contracts';
import { CliContext } from './context';
import { describeResult } from './watch';
import { operationId, startOperation } from './start';

export function registerVolume(program: Command): void {
  const volume = program.command('volume').description('move raw disk images in and out of the fleet');

  volume
    .command('import <image>')
    .description('attach a raw image (e.g. a filesystem) as a new volume of an instance, on its host')
    .requiredOption('--instance <instanceId>', 'instance that gets the volume')
    .option(
      '--workload-writes',
      "let the instance's synthetic workload write to it (default: leave the data alone)",
    )
    .action(async (image: string, opts: { instance: string; workloadWrites?: boolean }, command: Command) => {
      const ctx = CliContext.of(command);
      const instanceId = assertId('instance id', opts.instance);
      // The workers read the file, possibly from another working directory: pass an absolute path.
      const file = path.resolve(image);
      const stat = fs.statSync(file, { throwIfNoEntry: false });
      if (!stat?.isFile()) throw new Error(`${file} is not a file: give the path of a raw disk image`);
      const instance = ctx.maybeInventory()?.getInstance(instanceId);
      const input: VolumeImportInput = {
        instanceId,
        path: file,
        workloadWrites: opts.workloadWrites ?? false,
      };
      const handle = await startOperation(ctx, {
        type: WorkflowType.volumeImport,
        workflowId: operationId('volume-import', [instanceId]),
        args: [input],
        summary: `import ${path.basename(file)} → ${instanceId}${instance ? ` on ${instance.hostId}` : ''}`,
        visibility: {
          operation: Operation.volumeImport,
          instanceId,
          hostId: instance?.hostId,
          account: instance?.account,
        },
      });
      ctx.say(`${handle.workflowId}: importing ${file}...`);
      const result = (await handle.result()) as VolumeImportResult;
      ctx.emit({ workflowId: handle.workflowId, ...result });
      ctx.say(describeResult(WorkflowType.volumeImport, result));
    });

  volume
    .command('export <volumeId> <image>')
    .description("write a volume's content to a raw image file")
    .action(async (volumeArg: string, image: string, _opts: unknown, command: Command) => {
      const ctx = CliContext.of(command);
      const volumeId = assertId('volume id', volumeArg);
      const file = path.resolve(image);
      if (!fs.statSync(path.dirname(file), { throwIfNoEntry: false })?.isDirectory()) {
        throw new Error(`cannot write ${file}: ${path.dirname(file)} is not a directory`);
      }
      const inventory = ctx.maybeInventory();
      const record = inventory?.getVolume(volumeId);
      const instance = record ? inventory?.getInstance(record.instanceId) : undefined;
      const input: VolumeExportInput = { volumeId, path: file };
      const handle = await startOperation(ctx, {
        type: WorkflowType.volumeExport,
        workflowId: operationId('volume-export', [volumeId]),
        args: [input],
        summary: `export ${volumeId} → ${path.basename(file)}`,
        visibility: {
          operation: Operation.volumeExport,
          instanceId: record?.instanceId,
          hostId: record?.hostId,
          account: instance?.account,
        },
      });
      ctx.say(`${handle.workflowId}: exporting ${volumeId} to ${file}...`);
      const result = (await handle.result()) as VolumeExportResult;
      ctx.emit({ workflowId: handle.workflowId, ...result });
      ctx.say(describeResult(WorkflowType.volumeExport, result));
    });
}
