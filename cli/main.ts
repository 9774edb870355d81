import type { Command as CommandType } from 'commander';
import { resolve } from 'node:path';
import { startStandby } from './standby.js';

// First of all, before this process loads its modules: `run`'s supervisor boots meanwhile.
const standby = startStandby(process.argv);

/*
 * The server roles (registry, up, fsck) load their modules, and the YAML parser of their
 * configuration, when they run, so the client verbs (run, ps, …) start without them.
 */
const registryRole = () => import('./registry.js');
const registryConfig = () => import('./config.js');
const [{ Command }, { registerRunnerCommands }] = await Promise.all([import('commander'), import('./runner.js')]);

const program = new Command('slipway')
  .description('Build-ship-run container platform: OCI registry, builder, runner')
  .enablePositionalOptions()
  .showHelpAfterError();

program
  .command('registry')
  .description('run the OCI registry alone (filesystem or S3 storage)')
  .option('--listen <host:port>', 'address to listen on (SLIPWAY_LISTEN; default 127.0.0.1:5000)')
  .option('--data <dir>', 'storage directory (SLIPWAY_DATA; default ./.slipway/registry)')
  .option(
    '--storage <spec>',
    'storage, winning over --data: a directory, file:///dir, or s3://HOST:PORT/BUCKET?region=us-east-1&tls=false&prefix=P&redirect=true ' +
      'with credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or SLIPWAY_S3_ACCESS_KEY/SLIPWAY_S3_SECRET_KEY (SLIPWAY_STORAGE)',
  )
  .option('--config <file>', 'YAML configuration file (SLIPWAY_CONFIG)')
  .option('--no-delete', 'refuse DELETE of blobs and manifests (SLIPWAY_DELETE_ENABLED=false)')
  .option('--redis <url>', 'Redis of the build queue: also serve /api/builds and /hooks/git (SLIPWAY_REDIS_URL)')
  .action(async (opts: { listen?: string; data?: string; storage?: string; config?: string; delete?: boolean; redis?: string }, cmd: CommandType) => {
    const deleteEnabled = cmd.getOptionValueSource('delete') === 'cli' ? opts.delete : undefined;
    const { loadRegistryConfig } = await registryConfig();
    const cfg = loadRegistryConfig({ listen: opts.listen, data: opts.data, storage: opts.storage, config: opts.config, deleteEnabled, redis: opts.redis });
    const { runRegistry, stopOnSignals } = await registryRole();
    const running = await runRegistry(cfg);
    stopOnSignals(running.close);
    console.log(`slipway registry listening on ${running.url} (${running.storage})`);
  });

program
  .command('up')
  .description('run the whole stack on embedded defaults: a redis-server of its own, the registry on 127.0.0.1:5000 with the build API, one builder worker; state in ./.slipway')
  .option('--state <dir>', 'state directory', './.slipway')
  .option('--listen <host:port>', 'registry address', '127.0.0.1:5000')
  .action(async (opts: { state: string; listen: string }) => {
    const state = resolve(opts.state);
    const [{ startStack }, { SECRETS_KEY_ENV, secretsKeyFile, redactUrl }] = await Promise.all([import('./stack.js'), import('../builder/index.js')]);
    // Every part of this process (the hook handler, the build API) seals with <state>/secrets.key.
    process.env[SECRETS_KEY_ENV] = secretsKeyFile(state);
    const stack = await startStack(state);
    const { loadRegistryConfig } = await registryConfig();
    const cfg = loadRegistryConfig({ listen: opts.listen, data: `${state}/registry`, redis: stack.redisUrl });
    const { runRegistry, stopOnSignals } = await registryRole();
    const running = await runRegistry(cfg).catch(async (err: unknown) => {
      await stack.close();
      throw err;
    });
    stopOnSignals(async () => {
      await running.close();
      await stack.close();
    });
    console.log(`slipway up: registry listening on ${running.url}, redis at ${redactUrl(stack.redisUrl)} (password in ${state}/redis.url), one builder worker (state in ${state})`);
  });

program
  .command('fsck')
  .description('verify that every stored blob matches its digest and nothing partial is visible')
  .requiredOption('--data <dir>', 'storage directory')
  .action(async (opts: { data: string }) => {
    const { FilesystemDriver, checkIntegrity } = await import('../storage/index.js');
    const report = await checkIntegrity(new FilesystemDriver(resolve(opts.data)));
    for (const p of report.problems) console.log(`problem: ${p}`);
    console.log(`${report.blobs} blobs checked, ${report.problems.length} problems`);
    process.exitCode = report.problems.length ? 1 : 0;
  });

registerRunnerCommands(program, { standby });
const [{ registerGcCommand }, { registerBuildCommands }] = await Promise.all([import('./gc.js'), import('./build.js')]);
registerGcCommand(program);
registerBuildCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  console.error(`slipway: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
