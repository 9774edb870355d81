/*
 * The three builders the builder benchmark times, each set up in isolation under the benchmark's
 * work directory: BuildKit in a private dockerd, buildah on private storage, and Slipway's stack
 * (registry with /api/builds, a redis-server, a `slipway builder` worker). Each exposes the same
 * two commands — a first build (--no-cache) and a no-op rebuild — timed from spawn to exit.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRedisServer, type RedisServer } from '../builder/index.js';
import { startDockerd, DOCKER_BIN, type PrivateDockerd } from './docker-daemon.js';
import { run, spawnChild, waitFor, type Child, type RunResult } from './processes.js';
import { SLIPWAY_CLI } from './registries.js';

export const BUILDAH_BIN = '/usr/bin/buildah';
const FALLBACK_CLI = resolve(fileURLToPath(import.meta.url), '../builder-cli.js');
const FALLBACK_SERVER = resolve(fileURLToPath(import.meta.url), '../builder-server.js');
const BUILD_MS = 180_000;

export type ToolName = 'buildkit' | 'buildah' | 'slipway';

export interface Tool {
  name: ToolName;
  /** One build of `context` tagged `ref`; `noCache` for the first build. Throws on failure. */
  build(context: string, ref: string, noCache: boolean): Promise<RunResult>;
  /** Steps the output says came from the cache (a sanity check that the rebuild was a no-op). */
  cachedSteps(out: RunResult): Promise<number>;
  close(): Promise<void>;
}

/** Unmounts (lazily, deepest first) whatever is still mounted under `dir`. */
export async function unmountUnder(dir: string): Promise<void> {
  const points = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .map((line) => line.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await run('umount', ['-l', p], { timeoutMs: 30_000, check: false });
}

/** DOCKER_BUILDKIT=1 /usr/bin/docker build against a private dockerd (started here, stopped by close). */
export async function startBuildkit(dir: string, baseRef: string): Promise<Tool> {
  const d: PrivateDockerd = await startDockerd(dir);
  try {
    await d.docker(['pull', '-q', baseRef], 120_000);
  } catch (err) {
    await d.stop();
    throw err;
  }
  const env: NodeJS.ProcessEnv = { ...process.env, DOCKER_CONFIG: join(dir, 'cfg'), DOCKER_BUILDKIT: '1' };
  delete env.DOCKER_HOST;
  delete env.DOCKER_CONTEXT;
  const host = `unix://${join(dir, 'd.sock')}`;
  return {
    name: 'buildkit',
    build: (context, ref, noCache) =>
      run(DOCKER_BIN, ['-H', host, 'build', '--progress=plain', '--network', 'none', ...(noCache ? ['--no-cache'] : []), '-t', ref, context], { timeoutMs: BUILD_MS, env }),
    cachedSteps: async (out) => (out.stderr + out.stdout).match(/^#\d+ CACHED$/gm)?.length ?? 0,
    close: () => d.stop(),
  };
}

/** buildah bud --runtime runc on storage of its own (overlay, else vfs), the base pulled from the bench's registry. */
export async function startBuildah(dir: string, baseRef: string, log: (l: string) => void): Promise<Tool> {
  const policy = join(dir, 'policy.json');
  await mkdir(dir, { recursive: true });
  await writeFile(policy, JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  let storage: string[] = [];
  const buildah = (args: string[], timeoutMs = BUILD_MS) => run(BUILDAH_BIN, [...storage, ...args], { timeoutMs, env: { ...process.env, BUILDAH_ISOLATION: 'oci' } });
  const close = async () => {
    if (storage.length) {
      await buildah(['rm', '--all'], 60_000).catch(() => undefined);
      await buildah(['rmi', '--all', '--force'], 60_000).catch(() => undefined);
    }
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true });
  };
  let lastError = '';
  for (const driver of ['overlay', 'vfs']) {
    storage = ['--root', join(dir, `root-${driver}`), '--runroot', join(dir, `run-${driver}`), '--storage-driver', driver];
    try {
      await buildah(['pull', '--quiet', '--tls-verify=false', '--signature-policy', policy, baseRef], 120_000);
      log(`buildah storage driver: ${driver}`);
      lastError = '';
      break;
    } catch (err) {
      lastError = String(err);
      await buildah(['rmi', '--all', '--force'], 60_000).catch(() => undefined);
      await unmountUnder(dir);
    }
  }
  if (lastError) {
    await close();
    throw new Error(`buildah could not pull ${baseRef} with overlay or vfs storage: ${lastError}`);
  }
  return {
    name: 'buildah',
    build: (context, ref, noCache) =>
      buildah(['bud', '--layers', '--runtime', 'runc', '--isolation', 'oci', '--network', 'none', '--tls-verify=false', '--signature-policy', policy, ...(noCache ? ['--no-cache'] : []), '-t', ref, context]),
    cachedSteps: async (out) => (out.stderr + out.stdout).match(/Using cache/g)?.length ?? 0,
    close,
  };
}

/** Slipway's stack: registry (+ /api/builds), redis-server, one builder worker; builds timed through the CLI. */
export interface SlipwayStack extends Tool {
  registryUrl: string;
  registryHost: string;
  redisUrl: string;
  /** The CLI the builds run through: dist/cli/main.js, or the wire-less fallback. */
  cli: string;
  /** What had to be stood in for because it is not wired yet (empty when nothing). */
  fallbacks: string[];
  /** Pids of the stack's processes (registry, redis, worker). */
  pids(): Record<string, number>;
}

async function listening(child: Child, what: string, pattern: RegExp): Promise<string> {
  let found = '';
  await waitFor(
    what,
    async () => {
      if (child.exited()) throw new Error(`${what} exited before it was ready:\n${child.output()}`);
      found = pattern.exec(child.output())?.[1] ?? '';
      return found !== '';
    },
    60_000,
    50,
  );
  return found;
}

async function buildApiAnswers(url: string): Promise<boolean> {
  const res = await fetch(`${url}/api/builds?limit=1`).catch(() => undefined);
  await res?.body?.cancel();
  return res?.status === 200;
}

export async function startSlipwayStack(dir: string): Promise<SlipwayStack> {
  const stops: Array<() => Promise<void>> = [];
  const close = async () => {
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
    await unmountUnder(dir);
    await rm(dir, { recursive: true, force: true });
  };
  const fallbacks: string[] = [];
  try {
    await mkdir(dir, { recursive: true });
    const redis: RedisServer = await startRedisServer({ dir: join(dir, 'redis') });
    stops.push(() => redis.stop());
    const env = { ...process.env, SLIPWAY_REDIS_URL: redis.url, SLIPWAY_REDIS_PREFIX: 'slipway' };
    // `slipway registry` with Redis configured, when it mounts /api/builds; else the bench's stand-in.
    let registry = spawnChild(process.execPath, [SLIPWAY_CLI, 'registry', '--listen', '127.0.0.1:0', '--data', join(dir, 'registry')], { env });
    stops.push(() => registry.stop());
    let url = await listening(registry, 'slipway registry', /listening on (http:\/\/\S+)/);
    if (!(await buildApiAnswers(url))) {
      fallbacks.push('`slipway registry` does not serve /api/builds yet: bench/builder-server.ts (registry app + mountBuilder) stands in');
      await registry.stop();
      registry = spawnChild(process.execPath, [FALLBACK_SERVER, '--data', join(dir, 'registry'), '--redis', redis.url], { env });
      stops.push(() => registry.stop());
      url = await listening(registry, 'bench builder server', /listening on (http:\/\/\S+)/);
      if (!(await buildApiAnswers(url))) throw new Error(`the bench's builder server on ${url} does not answer /api/builds:\n${registry.output()}`);
    }
    const help = await run(process.execPath, [SLIPWAY_CLI, 'help'], { timeoutMs: 30_000, check: false });
    const wired = /^\s+build\b/m.test(help.stdout) && /^\s+builder\b/m.test(help.stdout);
    const cli = wired ? SLIPWAY_CLI : FALLBACK_CLI;
    if (!wired) fallbacks.push('`slipway build`/`builder` are not in cli/main.ts yet: bench/builder-cli.ts (cli/build.ts\'s registerBuildCommands under commander) stands in');
    const worker = spawnChild(process.execPath, [cli, 'builder', '--redis', redis.url, '--root', join(dir, 'worker')], { env, cwd: dir });
    stops.push(() => worker.stop(15_000));
    await listening(worker, 'slipway builder', /(slipway builder: worker)/);
    const cliEnv = { ...env, SLIPWAY_SERVER: url };
    return {
      name: 'slipway',
      registryUrl: url,
      registryHost: url.replace(/^http:\/\//, ''),
      redisUrl: redis.url,
      cli,
      fallbacks,
      pids: () => ({ registry: registry.pid, redis: redis.pid, worker: worker.pid }),
      build: (context, ref, noCache) =>
        run(process.execPath, [cli, 'build', '--server', url, ...(noCache ? ['--no-cache'] : []), '-t', ref, context], { timeoutMs: BUILD_MS, env: cliEnv, cwd: dir }),
      cachedSteps: async () => {
        const res = await fetch(`${url}/api/builds?limit=1`);
        const body = (await res.json()) as Array<{ cacheHits?: number }> | { builds?: Array<{ cacheHits?: number }> };
        const list = Array.isArray(body) ? body : (body.builds ?? []);
        return list[0]?.cacheHits ?? 0;
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}

export const hasBuildah = (): boolean => existsSync(BUILDAH_BIN);
