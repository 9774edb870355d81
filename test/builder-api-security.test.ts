import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { createServer, request, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BuilderRoutesOptions } from '../builder/api.js';
import { packContext } from '../builder/build-context.js';
import type { BuildJobData } from '../builder/queue.js';
import { freePort } from '../builder/redis.js';
import { buildQuery } from '../builder/spec.js';
import type { BuildFunction, BuildSecret } from '../builder/types.js';
import { pushBusybox } from './harness/build-fixtures.js';
import { STAND_IN, startBuilderEnv, type BuilderEnv } from './harness/builder-env.js';
import { sharedRedis, startTestRedis } from './harness/redis.js';
import type { RegistryProcess } from './harness/registry.js';
import { requireRoot } from './harness/runner.js';
import { standInBuild } from './harness/stand-in-build.js';

/*
 * The build API probed as a hostile local user would (issue 9): where secrets come
 * from and where they go, who may read a build's context or cancel it, where the
 * worker fetches from, what a 503 tells, and what a corrupt context is.
 */
let redis: { url: string; release(): Promise<void> };
before(async () => {
  redis = await sharedRedis();
});
after(async () => {
  await redis.release();
});

async function withEnv(fn: (env: BuilderEnv) => Promise<void>, opts: Partial<BuilderRoutesOptions> = {}, redisUrl = redis.url): Promise<void> {
  const env = await startBuilderEnv(redisUrl, opts);
  try {
    await fn(env);
  } finally {
    await env.close();
  }
}

const SECRET = 'client-side-s3cret-value';
const secret = (id = 'x', value = SECRET): BuildSecret => ({ id, value: Buffer.from(value) });

/** The stand-in executor, printing every secret it was given first. */
const echoSecrets: BuildFunction = async (req, log, opts) => {
  for (const s of req.secrets) log.line(`secret ${s.id}: ${s.value.toString()}`);
  return standInBuild(req, log, opts);
};

/** Every value under the env's prefix, whatever the key's type, as one text. */
async function dumpRedis(env: BuilderEnv): Promise<string> {
  const r = env.queue.redis;
  const out: string[] = [];
  for (const key of await r.keys(`${env.prefix}:*`)) {
    const type = await r.type(key);
    const v =
      type === 'string' ? await r.get(key)
      : type === 'hash' ? await r.hgetall(key)
      : type === 'list' ? await r.lrange(key, 0, -1)
      : type === 'set' ? await r.smembers(key)
      : type === 'zset' ? await r.zrange(key, '0', '-1')
      : type === 'stream' ? await r.xrange(key, '-', '+')
      : null;
    out.push(`${key} ${JSON.stringify(v)}`);
  }
  return out.join('\n');
}

/** POST /api/builds with a raw body (and any headers, Host included). */
function rawPost(url: string, query: string, body: Buffer | NodeJS.ReadableStream, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(`/api/builds?${query}`, url), { method: 'POST', headers: { 'Content-Type': 'application/x-tar', ...headers } }, (res: IncomingMessage) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    if (Buffer.isBuffer(body)) req.end(body);
    else body.pipe(req);
  });
}

/** Runs `slipway` (build commands, the stand-in executor) and collects its output. */
function slipway(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((ok) => {
    execFile(process.execPath, [STAND_IN, 'cli', ...args], { timeout: 60_000 }, (err, stdout, stderr) => ok({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

async function tempContext(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'slipway-sec-'));
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
  return dir;
}

describe('build secrets come from the client (#1)', () => {
  test('#1 slipway build --secret id=x,src=FILE reads the file on the client; RUN cat /run/secrets/x shows **** in the log', { skip: requireRoot() }, () =>
    withEnv(async (env) => {
      const { build } = await import('../builder/executor.js');
      await env.worker({ build });
      const base = await pushBusybox({ url: env.url, host: env.host } as RegistryProcess, 'sec/busybox', join(env.dir, 'busybox-rootfs'));
      const ctx = await tempContext({ Dockerfile: `FROM ${base}\nRUN --mount=type=secret,id=x,required=true cat /run/secrets/x; echo\n` });
      const file = join(ctx, '..', `${ctx.split('/').pop()}-secret`);
      await writeFile(file, SECRET);
      try {
        const r = await slipway(['build', '-t', `${env.host}/sec/app:1`, '--server', env.url, '--secret', `id=x,src=${file}`, ctx]);
        assert.equal(r.code, 0, r.stderr);
        const id = /build ([0-9a-f-]{36}) queued/.exec(r.stderr)?.[1];
        assert.ok(id, r.stderr);
        const log = await env.log(id);
        assert.match(log, /^#\d+ \*\*\*\*$/m, log);
        assert.ok(!log.includes(SECRET) && !r.stdout.includes(SECRET) && !r.stderr.includes(SECRET), 'the value is in no log');
        assert.deepEqual((await env.record(id)).spec.secrets, ['x'], 'the record names the secret, nothing more');
      } finally {
        await rm(ctx, { recursive: true, force: true });
        await rm(file, { force: true });
      }
    }));

  test('#1 a secrets parameter naming a path or a variable of the server is refused with 400', () =>
    withEnv(async (env) => {
      await env.worker({ build: echoSecrets });
      const tar = async () => (await packContext(await tempContext({ Dockerfile: 'LOG x\n' }), 'Dockerfile')).stream;
      const t = `t=${env.host}/app:x`;
      for (const secrets of ['[{"id":"x","src":"/etc/shadow"}]', '[{"id":"x","env":"HOME"}]']) {
        const r = await rawPost(env.url, `${t}&secrets=${encodeURIComponent(secrets)}`, await tar());
        assert.equal(r.status, 400, r.text);
        assert.match(r.text, /secret sources \(src\/env\) are not read on the server/);
      }
      // A reserved id in the body is refused too.
      const line = Buffer.from(`${JSON.stringify({ secrets: [{ id: 'slipway.git-credentials', value: 'eDp5' }] })}\n`);
      const reserved = await rawPost(env.url, t, Buffer.concat([line, Buffer.alloc(1024)]), { 'Content-Type': 'application/vnd.slipway.build+tar' });
      assert.equal(reserved.status, 400, reserved.text);
      assert.match(reserved.text, /reserved/);
      assert.deepEqual(await env.queue.list(), [], 'no build was queued');
    }));

  test('#1 secrets are sealed in Redis while queued, reach the build masked, and are deleted when it ends', () =>
    withEnv(async (env) => {
      const b = await env.submit({ Dockerfile: 'LOG building\n' }, {}, [secret('x'), secret('multi', 'line-one-secret\nline-two-secret')]);
      const cancelled = await env.submit({ Dockerfile: 'LOG never\n' }, {}, [secret('y')]);
      const dump = await dumpRedis(env);
      for (const plain of [SECRET, Buffer.from(SECRET).toString('base64'), 'line-one-secret']) assert.ok(!dump.includes(plain), `no plaintext in Redis: ${plain}`);
      const sealed = await env.queue.redis.hgetall(`${env.prefix}:build:${b.id}:secrets`);
      assert.deepEqual(Object.keys(sealed).sort(), ['multi', 'x']);
      assert.ok(Object.values(sealed).every((v) => v.startsWith('sealed:v1:')));
      assert.equal((await env.cancel(cancelled)).status, 202);
      assert.equal(await env.queue.redis.exists(`${env.prefix}:build:${cancelled.id}:secrets`), 0, 'a cancel deletes them');

      await env.worker({ build: echoSecrets });
      const r = await env.waitFor(b.id, ['succeeded', 'failed']);
      assert.equal(r.status, 'succeeded', await env.log(b.id));
      const log = await env.log(b.id);
      assert.match(log, /^secret x: \*\*\*\*$/m);
      assert.match(log, /^secret multi: \*\*\*\*$/m);
      assert.ok(!log.includes(SECRET) && !log.includes('line-one-secret') && !log.includes('line-two-secret'), log);
      assert.equal(await env.queue.redis.exists(`${env.prefix}:build:${b.id}:secrets`), 0, 'the build ended: its secrets are gone');
    }));
});

describe('host networking is the server’s decision (#3)', () => {
  test('#3 POST /api/builds?network=host answers 403 unless the registry allows it', async () => {
    await withEnv(async (env) => {
      const packed = await packContext(await tempContext({ Dockerfile: 'LOG x\n' }), 'Dockerfile');
      const spec = { tags: [`${env.host}/app:x`], dockerfile: 'Dockerfile', buildArgs: {}, labels: {}, noCache: false, network: 'host' as const, secrets: [] };
      const r = await rawPost(env.url, buildQuery(spec).toString(), packed.stream);
      assert.equal(r.status, 403, r.text);
      assert.match(r.text, /network=host are not allowed by this server.*SLIPWAY_BUILD_ALLOW_HOST_NETWORK=1/);
      assert.deepEqual(await env.queue.list(), []);
    });
    await withEnv(
      async (env) => {
        const b = await env.submit({ Dockerfile: 'LOG x\n' }, { network: 'host' });
        assert.equal(b.status, 'queued');
      },
      { allowHostNetwork: true },
    );
  });

  test('#3 a worker without --allow-network-host fails a host-network build as a user error without running it', () =>
    withEnv(
      async (env) => {
        let ran = 0;
        const counting: BuildFunction = (req, log, opts) => {
          ran++;
          return standInBuild(req, log, opts);
        };
        const strict = await env.worker({ build: counting });
        const b = await env.submit({ Dockerfile: 'LOG x\n' }, { network: 'host' });
        const f = await env.waitFor(b.id, ['succeeded', 'failed']);
        assert.equal(f.status, 'failed');
        assert.equal(f.error?.kind, 'user');
        assert.equal(f.attempts, 1);
        assert.match(f.error?.message ?? '', /does not run builds with network=host.*--allow-network-host/);
        assert.equal(ran, 0, 'the build function was never called');
        await strict.close();
        await env.worker({ build: counting, allowHostNetwork: true });
        const ok = await env.waitFor((await env.submit({ Dockerfile: 'LOG x\n' }, { network: 'host' })).id, ['succeeded', 'failed']);
        assert.equal(ok.status, 'succeeded', await env.log(ok.id));
        assert.equal(ran, 1);
      },
      { allowHostNetwork: true },
    ));
});

describe("a build's context, secrets and cancel belong to it (#6)", () => {
  test('#6 GET /api/builds shows build-arg names, not values; context, secrets and cancel need the build’s own tokens', () =>
    withEnv(async (env) => {
      const b = await env.submit({ Dockerfile: 'LOG hi\n' }, { buildArgs: { TOKEN: 'hunter2-value', PLAIN: 'p' } }, [secret('x')]);
      const other = await env.submit({ Dockerfile: 'LOG other\n' });
      const list = await (await fetch(`${env.url}/api/builds`)).text();
      const one = await (await fetch(`${env.url}/api/builds/${b.id}`)).text();
      for (const text of [list, one]) {
        assert.ok(!text.includes('hunter2-value'), text);
        assert.ok(!text.includes(b.cancelToken) && !text.includes('cancelToken') && !text.includes('TokenSha256'), 'no token, no token hash');
      }
      assert.deepEqual((JSON.parse(one) as { spec: { buildArgs: unknown; secrets: unknown } }).spec.buildArgs, { TOKEN: '<redacted>', PLAIN: '<redacted>' });
      assert.deepEqual((JSON.parse(one) as { spec: { secrets: unknown } }).spec.secrets, ['x']);
      // Tokens are kept as hashes only.
      const job = await env.queue.queue.getJob(b.id);
      const workerToken = (job!.data as BuildJobData).token!;
      const recordHash = JSON.stringify(await env.queue.redis.hgetall(`${env.prefix}:build:${b.id}`));
      assert.ok(!recordHash.includes(workerToken) && !recordHash.includes(b.cancelToken), 'the record holds neither token in clear');

      const contexts = join(env.dir, 'registry/slipway/contexts');
      const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
      const otherWorkerToken = bearer((await env.queue.queue.getJob(other.id))!.data.token!);
      for (const headers of [{}, bearer('wrong'), bearer(b.cancelToken), otherWorkerToken]) {
        assert.equal((await fetch(`${env.url}/api/builds/${b.id}/context`, { headers })).status, 404);
        assert.equal((await fetch(`${env.url}/api/builds/${b.id}/secrets`, { headers })).status, 404);
        assert.equal((await fetch(`${env.url}/api/builds/${b.id}/context`, { method: 'DELETE', headers })).status, 404);
      }
      for (const headers of [{}, bearer('wrong'), bearer(other.cancelToken), bearer(workerToken)]) {
        assert.equal((await fetch(`${env.url}/api/builds/${b.id}/cancel`, { method: 'POST', headers })).status, 403);
      }
      assert.equal((await readdir(contexts)).length, 2, 'no context was deleted');
      assert.equal((await env.record(b.id)).status, 'queued', 'nor the build cancelled');
      const secrets = await fetch(`${env.url}/api/builds/${b.id}/secrets`, { headers: bearer(workerToken) });
      assert.equal(secrets.status, 200, 'the worker’s token opens them');
      assert.equal(((await secrets.json()) as { secrets: { value: string }[] }).secrets[0]?.value, Buffer.from(SECRET).toString('base64'));

      await env.worker({ build: echoSecrets });
      assert.equal((await env.waitFor(b.id, ['succeeded', 'failed'])).status, 'succeeded', await env.log(b.id));
      assert.equal((await env.waitFor(other.id, ['succeeded', 'failed'])).status, 'succeeded');
      // The build ended: its token opens nothing any more.
      assert.equal((await fetch(`${env.url}/api/builds/${b.id}/secrets`, { headers: bearer(workerToken) })).status, 404);
      assert.equal((await fetch(`${env.url}/api/builds/${b.id}/context`, { headers: bearer(workerToken) })).status, 404);
      assert.deepEqual(await readdir(contexts), [], 'the worker deleted both contexts');
    }));
});

describe('the worker fetches from the registry, not from a header (#7)', () => {
  test('#7 a POST with Host: <another listener> sends the worker to the registry’s own URL; the other listener gets nothing', async () => {
    const seen: string[] = [];
    const recorder = createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.writeHead(404).end();
    });
    await new Promise<void>((ok) => recorder.listen(0, '127.0.0.1', () => ok()));
    const recorderHost = `127.0.0.1:${(recorder.address() as AddressInfo).port}`;
    try {
      await withEnv(async (env) => {
        await env.worker({ build: echoSecrets });
        const packed = await packContext(await tempContext({ Dockerfile: 'LIST\n', 'app.txt': 'hi' }), 'Dockerfile');
        const spec = { tags: [`${env.host}/app:x`], dockerfile: 'Dockerfile', buildArgs: {}, labels: {}, noCache: false, network: 'none' as const, secrets: [] };
        const r = await rawPost(env.url, buildQuery(spec).toString(), packed.stream, { Host: recorderHost });
        assert.equal(r.status, 201, r.text);
        const b = JSON.parse(r.text) as { id: string; source: { url: string } };
        assert.ok(b.source.url.startsWith(`${env.url}/api/builds/`), b.source.url);
        const done = await env.waitFor(b.id, ['succeeded', 'failed']);
        assert.equal(done.status, 'succeeded', await env.log(b.id));
        assert.match(await env.log(b.id), /files: Dockerfile app\.txt/);
        assert.deepEqual(seen, [], 'nothing reached the listener the Host header named');
      });
    } finally {
      await new Promise((r) => recorder.close(r));
    }
  });
});

describe('Redis credentials are never shown (#10)', () => {
  test('#10 a 503 body and slipway builder’s output never show the Redis password', async () => {
    const dead = `redis://:secretpw@127.0.0.1:${await freePort()}`;
    const env = await startBuilderEnv(dead);
    try {
      const packed = await packContext(await tempContext({ Dockerfile: 'LOG x\n' }), 'Dockerfile');
      const post = await rawPost(env.url, `t=${env.host}/app:x`, packed.stream);
      assert.equal(post.status, 503, post.text);
      assert.match(post.text, /Redis at redis:\/\/\*\*\*@127\.0\.0\.1:\d+ is not reachable/);
      assert.ok(!post.text.includes('secretpw'), post.text);
      const list = await fetch(`${env.url}/api/builds`, { signal: AbortSignal.timeout(10_000) });
      assert.equal(list.status, 503);
      assert.ok(!(await list.text()).includes('secretpw'));
      const failed = await slipway(['builder', '--redis', dead]);
      assert.equal(failed.code, 1);
      assert.match(failed.stderr, /is not reachable/);
      assert.ok(!`${failed.stdout}${failed.stderr}`.includes('secretpw'), failed.stderr);
    } finally {
      await env.close({ redisDown: true });
    }
    // A worker that starts prints its Redis without the password (a Redis without one accepts and ignores it).
    const withPassword = redis.url.replace('redis://', 'redis://:secretpw@');
    const child = spawn(process.execPath, [STAND_IN, 'cli', 'builder', '--redis', withPassword, '--root', await mkdtemp(join(tmpdir(), 'slipway-w-'))], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    try {
      for (let i = 0; i < 200 && !output.includes('slipway builder: worker'); i++) await sleep(50);
      assert.match(output, /slipway builder: worker \S+ on queue builds at redis:\/\/\*\*\*@127\.0\.0\.1:\d+/);
      assert.ok(!output.includes('secretpw'), output);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('Redis down: answers, not hangs (#14)', () => {
  test('#14 GET /api/builds, GET …/<id>, GET …/log, POST …/cancel and /hooks/git answer 503 with Retry-After while Redis is down', async () => {
    const own = await startTestRedis();
    const env = await startBuilderEnv(own.url);
    try {
      const b = await env.submit({ Dockerfile: 'LOG x\n' });
      await own.stop();
      const auth = { Authorization: `Bearer ${b.cancelToken}` };
      const routes: [string, RequestInit][] = [
        ['/api/builds', {}],
        [`/api/builds/${b.id}`, {}],
        [`/api/builds/${b.id}/log`, {}],
        [`/api/builds/${b.id}/log?follow=1`, {}],
        [`/api/builds/${b.id}/cancel`, { method: 'POST', headers: auth }],
        ['/hooks/git', { method: 'POST', headers: { 'X-GitHub-Event': 'push', 'X-Hub-Signature-256': `sha256=${'0'.repeat(64)}` }, body: '{}' }],
      ];
      for (const [path, init] of routes) {
        const res = await fetch(`${env.url}${path}`, { ...init, signal: AbortSignal.timeout(10_000) });
        assert.equal(res.status, 503, `${path}: ${res.status}`);
        assert.ok(res.headers.get('retry-after'), `${path} has Retry-After`);
        assert.match(await res.text(), /is not reachable/);
      }
    } finally {
      await env.close({ redisDown: true });
      await own.cleanup();
    }
  });
});

describe('a corrupt context is the caller’s error (#20)', () => {
  test('#20 a context that is not a tar fails the build once, as a user error, saying so', () =>
    withEnv(async (env) => {
      await env.worker();
      const r = await rawPost(env.url, `t=${env.host}/app:x`, Buffer.from('this is not a tar archive at all\n'.repeat(40)));
      assert.equal(r.status, 201, r.text);
      const { id } = JSON.parse(r.text) as { id: string };
      const f = await env.waitFor(id, ['succeeded', 'failed']);
      assert.equal(f.status, 'failed');
      assert.equal(f.error?.kind, 'user', JSON.stringify(f.error));
      assert.match(f.error?.message ?? '', /the build context is not a tar archive/);
      await sleep(600); // longer than the test backoff: a retry would have started
      assert.equal((await env.record(id)).attempts, 1);
      assert.equal((await env.queue.queue.getJob(id))?.attemptsMade, 1);
    }));
});
