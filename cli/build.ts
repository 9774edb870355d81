/*
 * `slipway build`, `slipway builder` and `slipway trigger add|ls|rm`.
 *
 * `build` talks to the registry process's API, not to Redis: the context has to
 * reach storage that every worker can read, the registry process already owns
 * that storage, and a developer's machine then needs HTTP access to one server
 * only (no Redis credentials on laptops). When Redis is down the API says so
 * (503) and the CLI prints it. `builder` and `trigger` are operator commands and
 * use Redis directly (--redis, SLIPWAY_REDIS_URL, else the URL `slipway up`
 * wrote to ./.slipway/redis.url, else redis://127.0.0.1:6379).
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { BuildFunction, BuildOptions, BuildSecret, BuildSpec } from '../builder/index.js';
import { apiJson, followBuild, logPrinter, submitBuild } from './build-client.js';

const builder = () => import('../builder/index.js');
const builderClient = () => import('../builder/client.js');
const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export const DEFAULT_SERVER = 'http://127.0.0.1:5000';

/** --redis, then SLIPWAY_REDIS_URL, then the file `slipway up` writes, then the default port. */
export function redisUrlOf(flag?: string): string {
  if (flag) return flag;
  if (process.env.SLIPWAY_REDIS_URL) return process.env.SLIPWAY_REDIS_URL;
  try {
    return readFileSync(resolve('.slipway/redis.url'), 'utf8').trim();
  } catch {
    return 'redis://127.0.0.1:6379';
  }
}
const prefixOf = () => process.env.SLIPWAY_REDIS_PREFIX || 'slipway';

function keyValues(list: string[], what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list) {
    const eq = kv.indexOf('=');
    if (eq < 1) {
      // docker takes `--build-arg NAME` as "from my environment"
      const v = what === '--build-arg' ? process.env[kv] : undefined;
      if (v === undefined) throw new Error(`${what} ${kv}: use KEY=VALUE`);
      out[kv] = v;
    } else out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

/**
 * `id=x,src=path` or `id=x,env=VAR` (docker's --secret), read here, on the client's
 * machine: the bytes travel with the build, and the server never reads a path or a
 * variable of its own for them. `id=X` alone is the variable X, as with docker.
 */
export function parseSecret(s: string): BuildSecret {
  const f = Object.fromEntries(s.split(',').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
  if (!f.id) throw new Error(`--secret ${s}: id= is required (id=NAME,src=PATH or id=NAME,env=VAR)`);
  const src = f.src ?? f.source;
  if (src) {
    try {
      return { id: f.id, value: readFileSync(resolve(src)) };
    } catch (err) {
      throw new Error(`--secret ${f.id}: cannot read ${src}: ${(err as Error).message}`);
    }
  }
  const name = f.env ?? f.id;
  const value = process.env[name];
  if (value === undefined) throw new Error(`--secret ${f.id}: the environment variable ${name} is not set (or give src=PATH)`);
  return { id: f.id, value: Buffer.from(value) };
}

interface BuildFlags {
  tag: string[];
  file?: string;
  buildArg: string[];
  label: string[];
  target?: string;
  cache: boolean;
  network: string;
  secret: string[];
  server?: string;
  detach?: boolean;
}

async function buildAction(context: string, flags: BuildFlags): Promise<void> {
  const server = flags.server ?? process.env.SLIPWAY_SERVER ?? DEFAULT_SERVER;
  if (flags.network !== 'none' && flags.network !== 'host') throw new Error(`--network must be none or host, not ${flags.network}`);
  const { packContext, buildQuery, validateRef } = await builderClient();
  const packed = await packContext(resolve(context), flags.file ? resolve(flags.file) : 'Dockerfile');
  const spec: BuildSpec = {
    tags: flags.tag.map(validateRef),
    dockerfile: packed.dockerfile,
    buildArgs: keyValues(flags.buildArg, '--build-arg'),
    labels: keyValues(flags.label, '--label'),
    target: flags.target,
    noCache: !flags.cache,
    network: flags.network,
    secrets: [],
  };
  const secrets = flags.secret.map(parseSecret);
  const record = await submitBuild(server, buildQuery(spec), packed.stream, secrets);
  process.stderr.write(`build ${record.id} queued (context: ${packed.stats.files} files, ${packed.stats.bytes} bytes)\n`);
  if (flags.detach) {
    console.log(record.id);
    return;
  }
  let cancelling = false;
  const onSigint = () => {
    if (cancelling) process.exit(130);
    cancelling = true;
    process.stderr.write(`cancelling build ${record.id} (Ctrl-C again to leave it running)\n`);
    void apiJson(server, `/api/builds/${record.id}/cancel`, 'POST', { Authorization: `Bearer ${record.cancelToken}` }).catch(() => undefined);
  };
  process.on('SIGINT', onSigint);
  const printer = await logPrinter(process.stderr.isTTY === true && process.stdout.isTTY === true);
  try {
    await followBuild(server, record.id, (e) => printer.entry(e));
  } finally {
    printer.stop();
    process.off('SIGINT', onSigint);
  }
  const done = await apiJson<{ status: string; imageDigest?: string; error?: { message: string; exitCode?: number; lastLines?: string[] } }>(server, `/api/builds/${record.id}`);
  if (done.status === 'succeeded') {
    console.log(done.imageDigest);
    return;
  }
  const e = done.error;
  const code = e?.exitCode !== undefined ? ` (exit code ${e.exitCode})` : '';
  process.stderr.write(`slipway build: build ${record.id} ${done.status}: ${e?.message ?? 'no reason given'}${code}\n`);
  process.exitCode = done.status === 'cancelled' ? 130 : 1;
}

export interface BuildCommandDeps {
  /** The executor used by `slipway builder`; the real one (builder/executor.ts) when absent. */
  build?: BuildFunction;
}

export function registerBuildCommands(program: Command, deps: BuildCommandDeps = {}): void {
  program
    .command('build')
    .description('build an image from a Dockerfile and a context directory, on the builder workers')
    .argument('<context>', 'context directory')
    .requiredOption('-t, --tag <ref>', 'HOST:PORT/repo:tag to push (repeatable)', collect, [])
    .option('-f, --file <path>', 'Dockerfile (default CONTEXT/Dockerfile)')
    .option('--build-arg <k=v>', 'build argument (repeatable)', collect, [])
    .option('--label <k=v>', 'image label (repeatable)', collect, [])
    .option('--target <stage>', 'build up to this stage')
    .option('--no-cache', 'run every step, ignoring the build cache')
    .option('--network <mode>', 'RUN network: none, or host where the server and its workers allow it', 'none')
    .option('--secret <spec>', 'id=NAME,src=PATH or id=NAME,env=VAR, read here and sent with the build (repeatable)', collect, [])
    .option('--server <url>', `Slipway server (SLIPWAY_SERVER; default ${DEFAULT_SERVER})`)
    .option('-d, --detach', 'print the build id and return without following the log')
    .action(async (context: string, flags: BuildFlags) => {
      await buildAction(context, flags);
      // Done: leave now rather than wait for idle keep-alive sockets to close (~60 ms of a no-op build).
      await new Promise<void>((r) => process.stdout.write('', () => r()));
      process.exit(process.exitCode ?? 0);
    });

  program
    .command('builder')
    .description('run a builder worker on the BullMQ queue "builds"')
    .option('--redis <url>', 'Redis URL (SLIPWAY_REDIS_URL)')
    .option('--concurrency <n>', 'builds at once', '1')
    .option('--root <dir>', "the worker's directory, kept 0700 (SLIPWAY_BUILDER_ROOT; default ./.slipway/builder)")
    .option('--memory <size>', 'memory limit of each RUN step, e.g. 4g; 0 for none (SLIPWAY_BUILD_MEMORY; default 2g)')
    .option('--pids-limit <n>', 'processes of each RUN step; 0 for no limit (SLIPWAY_BUILD_PIDS_LIMIT; default 4096)')
    .option('--cpus <n>', 'CPU quota of each RUN step, e.g. 1.5; 0 for none (SLIPWAY_BUILD_CPUS; default: all cores)')
    .option('--allow-local-urls', "let ADD <url> reach loopback, link-local and this worker's own addresses (SLIPWAY_BUILD_ALLOW_LOCAL_URLS=1)")
    .option('--allow-network-host', 'run builds that ask for network=host (refused otherwise)')
    .action(async (opts: { redis?: string; concurrency: string; root?: string; allowNetworkHost?: boolean } & WorkerFlags) => {
      const b = await builder();
      const redisUrl = redisUrlOf(opts.redis);
      await b.checkRedis(redisUrl);
      const concurrency = Number(opts.concurrency);
      if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`--concurrency must be a positive integer, not ${opts.concurrency}`);
      const root = resolve(opts.root ?? process.env.SLIPWAY_BUILDER_ROOT ?? '.slipway/builder');
      const build = deps.build ?? b.build;
      const buildOptions = await workerBuildOptions(opts);
      await prepareWorkerRoot(root);
      const onError = (err: unknown) => console.error('slipway builder:', b.redactUrls(err instanceof Error ? (err.stack ?? err.message) : String(err)));
      const allowHostNetwork = opts.allowNetworkHost === true;
      const running = await b.startBuildWorker({ redisUrl, prefix: prefixOf(), root, concurrency, build, ...buildOptions, allowHostNetwork, onError });
      // First signal: finish the running builds; a second one leaves them to other workers.
      let signals = 0;
      const stop = (signal: NodeJS.Signals) => {
        const force = ++signals > 1;
        console.error(`slipway builder: ${signal}, ${force ? 'stopping now (running builds go back to the queue)' : 'finishing running builds'}`);
        running.close(force).then(() => process.exit(0), () => process.exit(1));
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      console.log(`slipway builder: worker ${running.name} on queue builds at ${b.redactUrl(redisUrl)} (concurrency ${concurrency}, root ${root}${allowHostNetwork ? ', network=host allowed' : ''})`);
    });

  const trigger = program.command('trigger').description('map git pushes (repository + branch) to builds');
  trigger
    .command('add')
    .requiredOption('--repo <url-or-name>', 'clone URL, or owner/name as the push event names it')
    .option('--branch <name>', 'branch', 'main')
    .requiredOption('--tag <ref>', 'HOST:PORT/repo:tag to build ({branch}, {sha}, {short} allowed; repeatable)', collect, [])
    .option('--dockerfile <path>', 'Dockerfile inside the repository', 'Dockerfile')
    .option('--secret <s>', 'webhook secret for this repository (else the server-wide SLIPWAY_HOOK_SECRET); stored sealed')
    .option('--redis <url>', 'Redis URL (SLIPWAY_REDIS_URL)')
    .action((opts: { repo: string; branch: string; tag: string[]; dockerfile: string; secret?: string; redis?: string }) =>
      withRedis(opts.redis, async (b, redis) => {
        const input = { repo: opts.repo, branch: opts.branch, tags: opts.tag, dockerfile: opts.dockerfile, secret: opts.secret };
        const t = await b.addTrigger(redis, prefixOf(), input, secretsKey(b));
        const sealed = [t.secret ? 'secret' : '', t.credentials ? 'clone credentials' : ''].filter(Boolean).join(' and ');
        console.log(`trigger: ${t.repo} ${t.branch} → ${t.tags.join(', ')} (${t.dockerfile})${sealed ? `; ${sealed} sealed with ${b.secretsKeyFile()}` : ''}`);
      }),
    );
  trigger
    .command('ls')
    .option('--redis <url>', 'Redis URL (SLIPWAY_REDIS_URL)')
    .action((opts: { redis?: string }) =>
      withRedis(opts.redis, async (b, redis) => {
        // Secrets are never shown: only whether a trigger has its own (else the server-wide one is used).
        const rows = (await b.listTriggers(redis, prefixOf(), secretsKey(b))).map((t) => [t.repo, t.branch, t.tags.join(','), t.dockerfile, t.secret ? 'set' : 'server', t.credentials ? 'set' : '-']);
        printTable([['REPOSITORY', 'BRANCH', 'TAGS', 'DOCKERFILE', 'SECRET', 'CREDENTIALS'], ...rows]);
      }),
    );
  trigger
    .command('rm')
    .requiredOption('--repo <url-or-name>', 'repository')
    .option('--branch <name>', 'only this branch')
    .option('--redis <url>', 'Redis URL (SLIPWAY_REDIS_URL)')
    .action((opts: { repo: string; branch?: string; redis?: string }) =>
      withRedis(opts.redis, async (b, redis) => {
        const n = await b.removeTrigger(redis, prefixOf(), opts.repo, opts.branch);
        if (n === 0) throw new Error(`no trigger for ${opts.repo}${opts.branch ? ` ${opts.branch}` : ''}`);
        console.log(`removed ${n} trigger${n === 1 ? '' : 's'}`);
      }),
    );
}

export interface WorkerFlags {
  memory?: string;
  pidsLimit?: string;
  cpus?: string;
  allowLocalUrls?: boolean;
}

/** A worker's build options: its flags, else SLIPWAY_BUILD_* variables, else the executor's defaults. */
export async function workerBuildOptions(flags: WorkerFlags, env: NodeJS.ProcessEnv = process.env): Promise<Pick<BuildOptions, 'limits' | 'allowLocalUrls'>> {
  const { parseBytes, parseCount, parseCpus } = await import('../runner/index.js');
  const pick = (flag: string | undefined, name: string, what: string) => (flag !== undefined ? { text: flag, what } : env[name] ? { text: env[name]!, what: name } : undefined);
  const memory = pick(flags.memory, 'SLIPWAY_BUILD_MEMORY', '--memory');
  const pids = pick(flags.pidsLimit, 'SLIPWAY_BUILD_PIDS_LIMIT', '--pids-limit');
  const cpus = pick(flags.cpus, 'SLIPWAY_BUILD_CPUS', '--cpus');
  const limits: NonNullable<BuildOptions['limits']> = {};
  if (memory) limits.memory = parseBytes(memory.text, memory.what);
  if (limits.memory && limits.memory < 6 * 1024 ** 2) throw new Error(`${memory!.what} ${memory!.text}: the minimum is 6m (or 0 for no limit)`);
  if (pids) limits.pids = parseCount(pids.text, pids.what, { min: 0 });
  if (cpus) limits.cpus = cpus.text.trim() === '0' ? 0 : parseCpus(cpus.text) / 1e9;
  return { limits, allowLocalUrls: flags.allowLocalUrls === true || ['1', 'true'].includes(env.SLIPWAY_BUILD_ALLOW_LOCAL_URLS ?? '') };
}

/** The worker's directory and its contexts/ private (0700) before anything is written there. */
export async function prepareWorkerRoot(root: string): Promise<void> {
  const { privateDir, privateRoot } = await import('../runner/index.js');
  await privateRoot(root, 'the builder root');
  await privateDir(join(root, 'contexts'));
}

type Builder = Awaited<ReturnType<typeof builder>>;

/** The secrets key (SLIPWAY_SECRETS_KEY_FILE, else ./.slipway/secrets.key), read only when a secret is sealed or opened. */
const secretsKey = (b: Builder) => () => b.loadSecretsKey(b.secretsKeyFile());

async function withRedis(flag: string | undefined, fn: (b: Builder, redis: ReturnType<Builder['connectRedis']>) => Promise<void>): Promise<void> {
  const b = await builder();
  const url = redisUrlOf(flag);
  await b.checkRedis(url);
  const redis = b.connectRedis(url, 'slipway-cli');
  try {
    await fn(b, redis);
  } finally {
    redis.disconnect();
  }
}

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join('   ').trimEnd());
}
