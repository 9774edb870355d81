import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BuilderRoutesOptions } from '../builder/api.js';
import { purgeContexts } from '../builder/build-context.js';
import type { LogEntry } from '../builder/logs.js';
import { BuildQueue } from '../builder/queue.js';
import { freePort } from '../builder/redis.js';
import { followBuild } from '../cli/build-client.js';
import { pushBusybox } from './harness/build-fixtures.js';
import { STAND_IN, startBuilderEnv, until, type BuilderEnv } from './harness/builder-env.js';
import { sendAndHangUp } from './harness/http.js';
import { sharedRedis, startTestRedis } from './harness/redis.js';
import type { RegistryProcess } from './harness/registry.js';
import { requireRoot } from './harness/runner.js';
import { concurrency } from './harness/stand-in-build.js';

/*
 * The queue side of the builder on a real redis-server, with the stand-in
 * executor (test/harness/stand-in-build.ts): records, logs, retries, cancel,
 * concurrency, a worker killed mid-build, Redis restarted mid-queue.
 */
let redis: { url: string; release(): Promise<void> };
before(async () => {
  redis = await sharedRedis();
});
after(async () => {
  await redis.release();
});

async function withEnv(fn: (env: BuilderEnv) => Promise<void>, redisUrl = redis.url, opts: Partial<BuilderRoutesOptions> = {}): Promise<void> {
  const env = await startBuilderEnv(redisUrl ?? redis.url, opts);
  try {
    await fn(env);
  } finally {
    await env.close();
  }
}

describe('builder queue', () => {
  test('a build runs; record (status, timings, steps, cache hits, digest) and log are queryable', () =>
    withEnv(async (env) => {
      await env.worker();
      const b = await env.submit({ Dockerfile: 'LOG hello\nCACHED base\nLOG bye\n' }, { tags: [`${env.host}/app:v1`] });
      assert.equal(b.status, 'queued');
      const r = await env.waitFor(b.id, ['succeeded', 'failed']);
      assert.equal(r.status, 'succeeded', await env.log(b.id));
      assert.match(r.imageDigest ?? '', /^sha256:[0-9a-f]{64}$/);
      assert.equal(r.cacheHits, 1);
      assert.deepEqual(r.steps.map((s) => s.status), ['done', 'cached', 'done']);
      assert.ok(Date.parse(r.createdAt) <= Date.parse(r.startedAt!) && Date.parse(r.startedAt!) <= Date.parse(r.finishedAt!));
      assert.ok((r.durationMs ?? -1) >= 0 && (r.queuedMs ?? -1) >= 0);
      assert.equal(r.attempts, 1);
      const manifest = await fetch(`${env.url}/v2/app/manifests/v1`, { method: 'HEAD' });
      assert.equal(manifest.headers.get('docker-content-digest'), r.imageDigest);
      const log = await env.log(b.id);
      assert.match(log, /context: 1 files/);
      assert.match(log, /hello\n(.*\n)*bye\n/);
      const list = (await (await fetch(`${env.url}/api/builds`)).json()) as { id: string }[];
      assert.deepEqual(list.map((x) => x.id), [b.id]);
      // The uploaded context is removed from storage once the build ended.
      assert.equal((await fetch(`${env.url}/api/builds/${b.id}/context`)).status, 404);
    }));

  test('old records are pruned with their steps and logs', () =>
    withEnv(async (env) => {
      const queue = new BuildQueue({ redisUrl: env.redisUrl, prefix: env.prefix }, { keepRecords: 2 });
      try {
        const spec = { tags: [`${env.host}/app:x`], dockerfile: 'Dockerfile', buildArgs: {}, labels: {}, noCache: false, network: 'none' as const, secrets: [] };
        const source = { type: 'upload' as const, url: `${env.url}/nowhere`, size: 0, digest: '' };
        const ids: string[] = [];
        for (let i = 0; i < 3; i++) ids.push((await queue.enqueue(spec, source, 'api')).id);
        assert.deepEqual((await queue.list()).map((r) => r.id), [ids[2], ids[1]]);
        assert.equal(await queue.redis.exists(`${env.prefix}:build:${ids[0]}`, `${env.prefix}:build:${ids[0]}:log`), 0);
        assert.equal((await fetch(`${env.url}/api/builds/${ids[0]}`)).status, 404);
      } finally {
        await queue.close();
      }
    }));

  test('concurrency is configurable', () =>
    withEnv(async (env) => {
      concurrency.max = 0;
      await env.worker({ concurrency: 2 });
      const started = Date.now();
      const builds = await Promise.all([1, 2, 3, 4].map(() => env.submit({ Dockerfile: 'SLEEP 700\n' })));
      for (const b of builds) assert.equal((await env.waitFor(b.id, ['succeeded', 'failed'])).status, 'succeeded');
      assert.equal(concurrency.max, 2);
      assert.ok(Date.now() - started >= 1400, 'four 0.7 s builds, two at a time');
    }));

  test('a failed RUN fails the build with its exit code and last lines, and is not retried', () =>
    withEnv(async (env) => {
      await env.worker();
      const b = await env.submit({ Dockerfile: 'LOG compiling\nLOG linking\nFAIL user 3\nLOG never\n' });
      const r = await env.waitFor(b.id, ['failed', 'succeeded']);
      assert.equal(r.status, 'failed');
      assert.equal(r.error?.kind, 'user');
      assert.equal(r.error?.exitCode, 3);
      assert.deepEqual(r.error?.lastLines?.slice(-3), ['compiling', 'linking', 'step 3 is failing']);
      assert.equal(r.attempts, 1);
      await sleep(600); // longer than the backoff: a retry would have started
      const job = await env.queue.queue.getJob(b.id);
      assert.equal(await job?.getState(), 'failed');
      assert.equal(job?.attemptsMade, 1);
      assert.equal((await env.record(b.id)).attempts, 1);
      assert.doesNotMatch(await env.log(b.id), /never|retrying/);
    }));

  test('infrastructure failures are retried with backoff, then give up', () =>
    withEnv(async (env) => {
      await env.worker();
      const flaky = await env.submit({ Dockerfile: 'FAILUNTIL 3\nLOG made it\n' });
      const broken = await env.submit({ Dockerfile: 'FAIL infra\n' });
      const r = await env.waitFor(flaky.id, ['succeeded', 'failed']);
      assert.equal(r.status, 'succeeded', await env.log(flaky.id));
      assert.equal(r.attempts, 3);
      const log = await env.log(flaky.id);
      assert.equal(log.match(/retrying in/g)?.length, 2);
      assert.match(log, /retrying in 0\.2 s[^]*retrying in 0\.4 s[^]*attempt 3 of 3[^]*made it/);
      const f = await env.waitFor(broken.id, ['succeeded', 'failed']);
      assert.equal(f.status, 'failed');
      assert.equal(f.error?.kind, 'infrastructure');
      assert.equal(f.attempts, 3);
    }));

  test('builds can be cancelled, queued or running; a cancel is not retried', () =>
    withEnv(async (env) => {
      await env.worker({ concurrency: 1 });
      const running = await env.submit({ Dockerfile: 'LOG started\nSLEEP 20000\n' });
      const queued = await env.submit({ Dockerfile: 'LOG should not run\n' });
      await env.waitFor(running.id, ['running']);
      const c1 = await env.cancel(queued);
      assert.equal(c1.status, 202);
      assert.equal(((await c1.json()) as { status: string }).status, 'cancelled');
      const t0 = Date.now();
      assert.equal((await env.cancel(running)).status, 202);
      const r = await env.waitFor(running.id, ['cancelled', 'failed', 'succeeded'], 5000);
      assert.equal(r.status, 'cancelled');
      assert.ok(Date.now() - t0 < 2000, 'the AbortSignal stopped the build promptly');
      await sleep(600);
      assert.equal((await env.record(running.id)).status, 'cancelled');
      assert.equal((await env.queue.queue.getJob(running.id))?.attemptsMade, 1);
      const q = await env.record(queued.id);
      assert.equal(q.attempts, 0);
      assert.doesNotMatch(await env.log(queued.id), /should not run/);
      assert.equal((await fetch(`${env.url}/api/builds/${queued.id}/context`)).status, 404, 'its stored context was removed');
      assert.equal((await env.cancel({ ...queued, id: '00000000-0000-4000-8000-000000000000' })).status, 404);
    }));

  test('live logs reach two followers at once while the build runs', () =>
    withEnv(async (env) => {
      await env.worker();
      const b = await env.submit({ Dockerfile: 'LOG one\nSLEEP 800\nLOG two\nSLEEP 800\nLOG three\n' });
      const follow = async () => {
        const got: { text: string; status: string }[] = [];
        let end: LogEntry | undefined;
        await followBuild(env.url, b.id, (e) => {
          if (e.type === 'end') end = e;
          if (e.type === 'line' && e.text === 'one') void env.record(b.id).then((r) => got.push({ text: e.text, status: r.status }));
          else if (e.type === 'line') got.push({ text: e.text, status: '' });
        });
        return { got, end };
      };
      const [a, c] = await Promise.all([follow(), follow()]);
      for (const f of [a, c]) {
        assert.equal(f.end?.type === 'end' && f.end.status, 'succeeded');
        const texts = f.got.map((g) => g.text);
        for (const t of ['one', 'two', 'three']) assert.ok(texts.includes(t), `${t} in ${texts.join(',')}`);
        assert.equal(f.got.find((g) => g.text === 'one')?.status, 'running', 'the first line arrived while the build ran');
      }
      // SSE for the dashboard: same entries, as events.
      const sse = await (await fetch(`${env.url}/api/builds/${b.id}/log?follow=1`, { headers: { Accept: 'text/event-stream' } })).text();
      assert.match(sse, /event: line\ndata: \{[^\n]*"text":"two"/);
      assert.match(sse, /event: end\ndata: \{[^\n]*"status":"succeeded"/);
    }));

  test('a worker killed with SIGKILL mid-build leaves a stalled job that another worker completes', () =>
    withEnv(async (env) => {
      const workers = { first: await env.workerProcess('first'), second: await env.workerProcess('second') };
      const b = await env.submit({ Dockerfile: 'LOG begin\nSLEEP 3000\nLOG finished\n' });
      const victim = await until(async () => {
        const r = await env.record(b.id);
        return r.status === 'running' && (await env.log(b.id)).includes('begin') && (r.worker as keyof typeof workers);
      }, 'a worker to run the build');
      const survivor = victim === 'first' ? 'second' : 'first';
      workers[victim].kill('SIGKILL');
      const r = await env.waitFor(b.id, ['succeeded', 'failed'], 25_000);
      assert.equal(r.status, 'succeeded', await env.log(b.id));
      assert.equal(r.worker, survivor);
      assert.equal(r.attempts, 2);
      assert.match(await env.log(b.id), new RegExp(`worker ${victim} stopped during the build; started again on ${survivor}[^]*finished`));
    }));

  test('Redis stopped and started again mid-queue: no job is lost', async () => {
    let own = await startTestRedis();
    try {
      await withEnv(async (env) => {
        await env.worker({ lockDuration: 5000, stalledInterval: 2000 });
        const builds = [];
        for (let i = 0; i < 5; i++) builds.push(await env.submit({ Dockerfile: `SLEEP 300\nLOG build ${i}\n` }));
        await env.waitFor(builds[0]!.id, ['succeeded']);
        const port = own.port;
        own = await own.restart(); // SIGTERM, then a new redis-server over the same AOF and port
        assert.equal(own.port, port);
        for (const b of builds) {
          const r = await env.waitFor(b.id, ['succeeded', 'failed'], 30_000);
          assert.equal(r.status, 'succeeded', await env.log(b.id));
        }
        // The queue agrees, once a job whose result Redis missed has come back from its stall.
        const counts = await until(async () => {
          const c = await env.queue.counts();
          return c.completed === 5 && c;
        }, 'every job to be completed in the queue', 20_000).catch(async (err: Error) => {
          throw new Error(`${err.message}: ${JSON.stringify(await env.queue.counts())}`);
        });
        assert.equal(counts.failed, 0);
      }, own.url);
    } finally {
      await own.cleanup();
    }
  });
});

/** Runs `slipway` (with the build commands, the stand-in executor) and collects its output. */
function slipway(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((ok) => {
    execFile(process.execPath, [STAND_IN, 'cli', ...args], { env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) =>
      ok({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

async function contextDir(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'slipway-ctx-'));
  for (const [name, content] of Object.entries(files)) {
    await mkdir(dirname(join(dir, name)), { recursive: true });
    await writeFile(join(dir, name), content);
  }
  return dir;
}

describe('slipway build', () => {
  test('sends the context minus .dockerignore, follows the log, prints the digest', () =>
    withEnv(async (env) => {
      await env.worker();
      const ctx = await contextDir({
        'Dockerfile': 'LIST\nLOG hello from the cli\n',
        '.dockerignore': 'secret.txt\nlogs\n!logs/keep.log\n',
        'secret.txt': 'do not send',
        'logs/a.log': 'no',
        'logs/keep.log': 'yes',
        'src/app.js': 'console.log(1)',
      });
      try {
        const r = await slipway(['build', '-t', `${env.host}/cli/app:1`, '--server', env.url, ctx]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /files: \.dockerignore Dockerfile logs\/keep\.log src\/app\.js\n/);
        assert.match(r.stdout, /hello from the cli/);
        const digest = r.stdout.trim().split('\n').at(-1)!;
        assert.match(digest, /^sha256:[0-9a-f]{64}$/);
        const head = await fetch(`${env.url}/v2/cli/app/manifests/1`, { method: 'HEAD' });
        assert.equal(head.headers.get('docker-content-digest'), digest);
      } finally {
        await rm(ctx, { recursive: true, force: true });
      }
    }));

  test('a failing build exits non-zero with the exit code; a bad tag is refused with a clear message', () =>
    withEnv(async (env) => {
      await env.worker();
      const ctx = await contextDir({ Dockerfile: 'LOG about to fail\nFAIL user 7\n' });
      try {
        const r = await slipway(['build', '-t', `${env.host}/app:bad`, '--server', env.url, ctx]);
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stdout, /about to fail/, `stderr: ${r.stderr}`);
        assert.match(r.stderr, /build [0-9a-f-]{36} failed: RUN 7 exited with 7 \(exit code 7\)/);
        const tag = await slipway(['build', '-t', 'no-registry-host', '--server', env.url, ctx]);
        assert.equal(tag.code, 1);
        assert.match(tag.stderr, /invalid image reference "no-registry-host": use HOST:PORT\/repo:tag/);
      } finally {
        await rm(ctx, { recursive: true, force: true });
      }
    }));

  test('a client that hangs up mid-upload leaves no build and no stored context; old contexts are purged', () =>
    withEnv(async (env) => {
      const head = `POST /api/builds?t=${env.host}/app:x HTTP/1.1\nHost: ${env.host}\nContent-Type: application/x-tar\nContent-Length: 1000000\n`;
      await sendAndHangUp(env.url, head, Buffer.alloc(300_000, 1));
      await sleep(300);
      assert.deepEqual(await env.queue.list(), []);
      assert.deepEqual(await readdir(join(env.dir, 'registry/slipway/contexts')).catch(() => []), []);
      // A context whose build never ran is left for the janitor, which removes it once old.
      await env.submit({ Dockerfile: 'LOG x\n' });
      assert.equal(await purgeContexts(env.store, 60_000), 0);
      assert.equal(await purgeContexts(env.store, -1000), 1);
      assert.deepEqual(await readdir(join(env.dir, 'registry/slipway/contexts')), []);
    }));

  test('the context limit is enforced while streaming (413, clear message)', () =>
    withEnv(
      async (env) => {
        const ctx = await contextDir({ Dockerfile: 'LOG x\n', 'big.bin': 'x'.repeat(300_000) });
        try {
          const r = await slipway(['build', '-t', `${env.host}/app:big`, '--server', env.url, ctx]);
          assert.equal(r.code, 1);
          assert.match(r.stderr, /refused the build \(413\): the build context is larger than the limit of 100000 bytes/);
          assert.deepEqual(await env.queue.list(), []);
        } finally {
          await rm(ctx, { recursive: true, force: true });
        }
      },
      undefined,
      { contextLimit: 100_000 },
    ));

  test('server or Redis not reachable: a clear message and a non-zero exit', async () => {
    const ctx = await contextDir({ Dockerfile: 'LOG x\n' });
    const deadRedis = `redis://127.0.0.1:${await freePort()}`;
    const env = await startBuilderEnv(deadRedis);
    try {
      const noServer = `http://127.0.0.1:${await freePort()}`;
      const a = await slipway(['build', '-t', '127.0.0.1:5000/app:x', '--server', noServer, ctx]);
      assert.equal(a.code, 1);
      assert.match(a.stderr, new RegExp(`cannot reach the Slipway server at ${noServer} \\(connection refused\\)`));
      const b = await slipway(['build', '-t', `${env.host}/app:x`, '--server', env.url, ctx]);
      assert.equal(b.code, 1);
      assert.match(b.stderr, new RegExp(`\\(503\\): Redis at ${deadRedis} is not reachable \\(.*ECONNREFUSED.*\\)`));
      const c = await slipway(['builder', '--redis', deadRedis]);
      assert.equal(c.code, 1);
      assert.match(c.stderr, new RegExp(`Redis at ${deadRedis} is not reachable`));
    } finally {
      await env.close({ redisDown: true });
      await rm(ctx, { recursive: true, force: true });
    }
  });
});

describe('with the real executor (builder/executor.ts)', () => {
  test('a Dockerfile sent through /api/builds becomes an image in the registry; a rebuild is cached; a user error is not retried', () =>
    withEnv(async (env) => {
      const { build } = await import('../builder/executor.js');
      await env.worker({ build });
      const files = { Dockerfile: 'FROM scratch\nCOPY hello.txt /hello.txt\nLABEL built.by=slipway\nCMD ["/hello"]\n', 'hello.txt': 'hello\n' };
      const first = await env.submit(files, { tags: [`${env.host}/real/app:1`] });
      const r = await env.waitFor(first.id, ['succeeded', 'failed'], 60_000);
      assert.equal(r.status, 'succeeded', await env.log(first.id));
      assert.ok(r.steps.length >= 3, JSON.stringify(r.steps));
      const head = await fetch(`${env.url}/v2/real/app/manifests/1`, { method: 'HEAD' });
      assert.equal(head.headers.get('docker-content-digest'), r.imageDigest);
      const again = await env.waitFor((await env.submit(files, { tags: [`${env.host}/real/app:1`] })).id, ['succeeded', 'failed'], 60_000);
      assert.equal(again.status, 'succeeded');
      assert.equal(again.imageDigest, r.imageDigest);
      assert.ok(again.cacheHits > 0, `cache hits on rebuild: ${again.cacheHits}`);
      const bad = await env.submit({ Dockerfile: 'FROM scratch\nCOPY missing.txt /\n' }, { tags: [`${env.host}/real/app:bad`] });
      const f = await env.waitFor(bad.id, ['succeeded', 'failed'], 60_000);
      assert.equal(f.status, 'failed');
      assert.equal(f.error?.kind, 'user', JSON.stringify(f.error));
      assert.equal(f.attempts, 1);
      assert.match(f.error?.message ?? '', /missing\.txt/);
    }));

  test('a RUN that exits 3 fails the build with that exit code and its last lines; a running RUN can be cancelled', { skip: requireRoot() }, () =>
    withEnv(async (env) => {
      const { build } = await import('../builder/executor.js');
      await env.worker({ build, concurrency: 2 });
      const base = await pushBusybox({ url: env.url, host: env.host } as RegistryProcess, 'real/busybox', join(env.dir, 'busybox-rootfs'));
      const failing = await env.submit({ Dockerfile: `FROM ${base}\nRUN echo compiling; echo linking; exit 3\n` }, { tags: [`${env.host}/real/fail:1`] });
      const slow = await env.submit({ Dockerfile: `FROM ${base}\nRUN echo sleeping; sleep 60\n` }, { tags: [`${env.host}/real/slow:1`] });
      const f = await env.waitFor(failing.id, ['succeeded', 'failed'], 60_000);
      assert.equal(f.status, 'failed', await env.log(failing.id));
      assert.equal(f.error?.kind, 'user');
      assert.equal(f.error?.exitCode, 3);
      assert.ok(f.error?.lastLines?.some((l) => l.includes('linking')), JSON.stringify(f.error));
      assert.equal(f.attempts, 1);
      await until(async () => (await env.log(slow.id)).includes('sleeping'), 'the slow RUN to start', 60_000);
      const t0 = Date.now();
      await env.cancel(slow);
      const c = await env.waitFor(slow.id, ['cancelled', 'failed', 'succeeded'], 20_000);
      assert.equal(c.status, 'cancelled');
      assert.ok(Date.now() - t0 < 10_000, `cancelled in ${Date.now() - t0} ms`);
    }));
});
