/*
 * Wire-less fallback for the builder benchmark, used only while cli/main.ts does not register
 * `slipway build` / `slipway builder` yet: the very commands of cli/build.ts (registerBuildCommands:
 * packContext, submitBuild, followBuild, startBuildWorker), under a bare commander program.
 * Run as `node dist/bench/builder-cli.js build|builder …`.
 */
import { Command } from 'commander';
import { registerBuildCommands } from '../cli/build.js';

const program = new Command('slipway').enablePositionalOptions();
registerBuildCommands(program);
program.parseAsync(process.argv).catch((err: unknown) => {
  console.error(`slipway: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
