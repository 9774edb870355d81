import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { mountBuilder, type BuilderRoutesOptions } from '../../builder/api.js';
import { packContext } from '../../builder/build-context.js';
import type { BuildQueue, SubmittedBuild } from '../../builder/queue.js';
import type { BuildRecord, BuildSpec } from '../../builder/records.js';
import { buildQuery } from '../../builder/spec.js';
import type { BuildSecret } from '../../builder/types.js';
import { startBuildWorker, type BuildWorkerOptions, type RunningWorker } from '../../builder/worker.js';
import { submitBuild } from '../../cli/build-client.js';
import { createRegistryApp } from '../../registry/index.js';
import { FilesystemDriver, createStore, type Store } from '../../storage/index.js';
import { randomPrefix } from './redis.js';
import { standInBuild } from './stand-in-build.js';

/** The stand-in's script runner, compiled. */
export const STAND_IN = resolve(fileURLToPath(import.meta.url), '../stand-in-build.js');

/**
 * A registry (in this process, filesystem storage in a temp dir) with the
 * builder's routes mounted over a random Redis prefix, plus workers on demand.
 */
export interface BuilderEnv {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT, for image references */
  host: string;
  prefix: string;
  redisUrl: string;
  queue: BuildQueue;
  store: Store;
  dir: string;
  worker(opts?: Partial<BuildWorkerOptions>): Promise<RunningWorker>;
  /** A worker in a process of its own (killable), started with the stand-in build. */
  workerProcess(name: string, opts?: { lock?: number; stalled?: number }): Promise<ChildProcess>;
  /** Writes `files` into a fresh context dir and submits it like `slipway build` does (with `secrets`' values). */
  submit(files: Record<string, string>, spec?: Partial<BuildSpec>, secrets?: BuildSecret[]): Promise<SubmittedBuild>;
  /** POST …/cancel with the build's cancel token. */
  cancel(build: SubmittedBuild): Promise<Response>;
  record(id: string): Promise<BuildRecord>;
  waitFor(id: string, statuses: string[], timeoutMs?: number): Promise<BuildRecord>;
  log(id: string): Promise<string>;
  /** `redisDown`: Redis is not there; nothing is cleaned in it. */
  close(opts?: { redisDown?: boolean }): Promise<void>;
}

export async function startBuilderEnv(redisUrl: string, opts: Partial<BuilderRoutesOptions> = {}): Promise<BuilderEnv> {
  const dir = await mkdtemp(join(tmpdir(), 'slipway-builder-'));
  const prefix = opts.prefix ?? randomPrefix('b');
  const store = createStore(new FilesystemDriver(join(dir, 'registry')));
  const app = createRegistryApp({ store, log: () => undefined });
  const server: Server = createServer(app);
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', () => ok()));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const url = `http://${host}`;
  // Mounted once listening, like `slipway registry`: workers are sent to the registry's own URL.
  const mounted = mountBuilder(app.express, { redisUrl, prefix, store, attempts: 3, backoffMs: 200, registryUrl: url, secretsKey: randomBytes(32), ...opts });
  const workers: RunningWorker[] = [];
  const children: ChildProcess[] = [];
  let contexts = 0;

  const env: BuilderEnv = {
    url,
    host,
    prefix,
    redisUrl,
    queue: mounted.queue,
    store,
    dir,
    async worker(o = {}) {
      const w = await startBuildWorker({ redisUrl, prefix, root: join(dir, `worker-${workers.length}`), build: standInBuild, cancelPollMs: 300, ...o });
      workers.push(w);
      return w;
    },
    async workerProcess(name, o = {}) {
      const args = [STAND_IN, 'worker', '--redis', redisUrl, '--prefix', prefix, '--root', join(dir, `proc-${name}`), '--name', name];
      const child = spawn(process.execPath, [...args, '--lock', String(o.lock ?? 1500), '--stalled', String(o.stalled ?? 1000)], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(child);
      await new Promise<void>((ok, fail) => {
        child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && ok());
        child.once('exit', (code) => fail(new Error(`worker ${name} exited with ${code} before it was ready`)));
      });
      return child;
    },
    async submit(files, spec = {}, secrets = []) {
      const ctx = join(dir, `context-${contexts++}`);
      for (const [name, content] of Object.entries(files)) {
        await mkdir(dirname(join(ctx, name)), { recursive: true });
        await writeFile(join(ctx, name), content);
      }
      const packed = await packContext(ctx, spec.dockerfile ?? 'Dockerfile');
      const full: BuildSpec = { tags: [`${host}/app:latest`], buildArgs: {}, noCache: false, network: 'none', secrets: [], labels: {}, ...spec, dockerfile: packed.dockerfile };
      return submitBuild(url, buildQuery(full), packed.stream, secrets);
    },
    cancel(build) {
      return fetch(`${url}/api/builds/${build.id}/cancel`, { method: 'POST', headers: { Authorization: `Bearer ${build.cancelToken}` } });
    },
    async record(id) {
      const res = await fetch(`${url}/api/builds/${id}`);
      if (res.status !== 200) throw new Error(`GET /api/builds/${id}: ${res.status} ${await res.text()}`);
      return (await res.json()) as BuildRecord;
    },
    async waitFor(id, statuses, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        // 503 while Redis is away (a test restarting it): asked again until the deadline.
        const r = await env.record(id).catch((err: Error) => {
          if (!/: 503 /.test(err.message) || Date.now() > deadline) throw err;
          return null;
        });
        if (r && statuses.includes(r.status)) return r;
        if (Date.now() > deadline) throw new Error(`build ${id} is ${r?.status}, not ${statuses.join('|')}, after ${timeoutMs} ms:\n${await env.log(id)}`);
        await sleep(50);
      }
    },
    async log(id) {
      return (await fetch(`${url}/api/builds/${id}/log`)).text();
    },
    async close(o = {}) {
      for (const c of children) {
        if (c.exitCode === null && c.signalCode === null) {
          c.kill('SIGKILL');
          await new Promise((r) => c.once('exit', r));
        }
      }
      await Promise.all(workers.map((w) => w.close(true)));
      if (!o.redisDown) {
        await mounted.queue.queue.obliterate({ force: true }).catch(() => undefined);
        const keys = await mounted.queue.redis.keys(`${prefix}:*`);
        if (keys.length) await mounted.queue.redis.del(...keys);
      }
      await Promise.race([mounted.close(), sleep(2000)]);
      mounted.queue.redis.disconnect();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await rm(dir, { recursive: true, force: true });
    },
  };
  return env;
}

/** Polls until `fn` returns a truthy value. */
export async function until<T>(fn: () => Promise<T | undefined | null | false>, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
