import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import express from 'express';
import { Redis } from 'ioredis';
import { gitHookHandlers } from '../builder/hooks.js';
import { freePort } from '../builder/redis.js';
import { SECRETS_KEY_ENV, loadSecretsKey, secretsKeyFile } from '../builder/seal.js';
import { prepareSource } from '../builder/sources.js';
import type { BuildLogger } from '../builder/types.js';
import { startStack } from '../cli/stack.js';
import { STAND_IN, startBuilderEnv, type BuilderEnv } from './harness/builder-env.js';
import { git, run, serveGitHttp, type GitHttpServer } from './harness/git-http.js';
import { randomPrefix, sharedRedis } from './harness/redis.js';
import { standInBuild } from './harness/stand-in-build.js';

/*
 * Issue 9, the webhook and `slipway up` side: what `up` leaves on disk and in
 * its Redis, and what /hooks/git tells a caller who has not proved anything.
 */
const CLI = resolve(fileURLToPath(import.meta.url), '../../cli/main.js');
// One secrets key for this file: the hook handler here and the `slipway trigger` processes it starts.
const keyDir = mkdtempSync(join(tmpdir(), 'slipway-key-'));
process.env[SECRETS_KEY_ENV] = join(keyDir, 'secrets.key');
const temps: string[] = [keyDir];
after(async () => {
  for (const t of temps) await rm(t, { recursive: true, force: true });
});

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), `slipway-${label}-`));
  temps.push(dir);
  return dir;
}

/** Every path under `dir` (itself included) with its permission bits. */
async function modes(dir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>([[dir, (await stat(dir)).mode & 0o777]]);
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    const full = join(e.parentPath, e.name);
    out.set(full, (await stat(full)).mode & 0o777);
  }
  return out;
}

const octal = (m: Map<string, number>) => Object.fromEntries([...m].map(([k, v]) => [k, v.toString(8)]));

describe('slipway up: private state, a Redis with a password', () => {
  test('#15 state dir, Redis dir and AOF files are private under umask 000', async () => {
    const state = join(await tempDir('up-umask'), 'state');
    const old = process.umask(0);
    let stack: Awaited<ReturnType<typeof startStack>> | undefined;
    try {
      stack = await startStack(state, { build: standInBuild, prefix: randomPrefix('up') });
      const client = new Redis(stack.redisUrl, { maxRetriesPerRequest: 1 });
      await client.set('slipway-test-umask', 'x');
      client.disconnect();
    } finally {
      process.umask(old);
      await stack?.close();
    }
    assert.equal((await stat(state)).mode & 0o777, 0o700);
    assert.equal((await stat(join(state, 'redis.url'))).mode & 0o777, 0o600);
    const redisFiles = await modes(join(state, 'redis'));
    assert.ok([...redisFiles.keys()].some((f) => f.endsWith('.aof')), `an AOF file exists: ${[...redisFiles.keys()].join(' ')}`);
    for (const [file, mode] of redisFiles) {
      const isDir = (await stat(file)).isDirectory();
      assert.equal(mode, isDir ? 0o700 : 0o600, `${file}: ${JSON.stringify(octal(redisFiles))}`);
    }
  });

  test('#3 the Redis of slipway up refuses an unauthenticated PING; builds still run through it', async () => {
    const state = join(await tempDir('up-auth'), 'state');
    const prefix = randomPrefix('up');
    const stack = await startStack(state, { build: standInBuild, prefix });
    try {
      const url = new URL(stack.redisUrl);
      assert.ok(url.password.length >= 32, 'the URL carries a long random password');
      assert.equal((await readFile(join(state, 'redis.url'), 'utf8')).trim(), stack.redisUrl);
      const cmdline = await readFile(`/proc/${stack.redis.pid}/cmdline`, 'utf8');
      assert.ok(!cmdline.includes(url.password), 'the password is not on the command line');
      // What a RUN step with host networking would try: plain RESP, no AUTH.
      const anonymous = await rawRequest(`redis://127.0.0.1:${url.port}`, '', `PING\r\nHGETALL ${prefix}:triggers\r\nQUIT\r\n`, 10_000);
      assert.match(anonymous.text, /^-NOAUTH .*\r\n-NOAUTH /s, anonymous.text);
      const env = await startBuilderEnv(stack.redisUrl, { prefix });
      try {
        const record = await env.submit({ Dockerfile: 'LOG built through an authenticated Redis\n' });
        const done = await env.waitFor(record.id, ['succeeded', 'failed'], 30_000);
        assert.equal(done.status, 'succeeded', await env.log(record.id));
        assert.match(await env.log(record.id), /built through an authenticated Redis/);
      } finally {
        await env.close();
      }
    } finally {
      await stack.close();
    }
  });

  test('#3 slipway up prints its Redis URL without the password', async () => {
    const state = join(await tempDir('up-cli'), 'state');
    const port = await freePort();
    const child = spawn(process.execPath, [CLI, 'up', '--state', state, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    try {
      const deadline = Date.now() + 30_000;
      while (!out.includes('slipway up:') && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, /slipway up: .*redis at redis:\/\/\*\*\*@127\.0\.0\.1:\d+/, out);
      const password = new URL((await readFile(join(state, 'redis.url'), 'utf8')).trim()).password;
      assert.ok(password.length >= 32);
      assert.ok(!out.includes(password), out);
    } finally {
      if (child.exitCode === null) child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});

/** A bare repository `<served>/<name>` holding one commit of `files`; returns the commit id. */
async function repository(served: string, name: string, files: Record<string, string>): Promise<string> {
  const work = await mkdtemp(join(tmpdir(), 'slipway-work-'));
  temps.push(work);
  await mkdir(join(served, name, '..'), { recursive: true });
  await git(served, 'init', '-q', '--bare', '-b', 'main', name);
  await git(work, 'init', '-q', '-b', 'main', '.');
  for (const [file, text] of Object.entries(files)) await writeFile(join(work, file), text);
  await git(work, 'add', '-A');
  await git(work, 'commit', '-q', '-m', 'one');
  await git(work, 'push', '-q', join(served, name), 'main');
  return git(work, 'rev-parse', 'HEAD');
}

interface Reply {
  status: number;
  text: string;
  body: { error?: string; duplicate?: string; builds?: { id: string }[] };
}

async function sendHook(base: string, payload: unknown, headers: Record<string, string>): Promise<Reply> {
  const res = await fetch(`${base}/hooks/git`, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(payload) });
  const text = await res.text();
  return { status: res.status, text, body: JSON.parse(text || '{}') as Reply['body'] };
}

const signed = (payload: unknown, secret: string, delivery = randomUUID()): Record<string, string> => ({
  'X-GitHub-Event': 'push',
  'X-GitHub-Delivery': delivery,
  'X-Hub-Signature-256': `sha256=${createHmac('sha256', secret).update(JSON.stringify(payload)).digest('hex')}`,
});

const push = (repo: string, sha: string, cloneUrl: string) => ({ ref: 'refs/heads/main', after: sha, repository: { full_name: repo, clone_url: cloneUrl } });

async function jobCount(env: BuilderEnv): Promise<number> {
  return Object.values(await env.queue.counts()).reduce((a, b) => a + b, 0);
}

/** Writes `head` (and `body`) on a fresh connection; resolves with all it reads until the server closes it. */
function rawRequest(url: string, head: string, body: string, timeoutMs: number): Promise<{ text: string; closed: boolean }> {
  const { hostname, port } = new URL(url);
  return new Promise((ok) => {
    const socket = connect(Number(port), hostname);
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      ok({ text, closed: false });
    }, timeoutMs);
    socket.on('data', (d: Buffer) => (text += d.toString()));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      ok({ text, closed: true });
    });
    socket.write(head + body);
  });
}

describe('/hooks/git with triggers sealed at rest', () => {
  let redis: { url: string; release(): Promise<void> };
  let env: BuilderEnv;
  let bare: BuilderEnv;
  let served: string;
  let gitServer: GitHttpServer;
  const token = `tok-${randomBytes(12).toString('hex')}`;
  const secret = `hook-${randomBytes(12).toString('hex')}`;
  let sha: string;

  before(async () => {
    redis = await sharedRedis();
    // The key `slipway trigger` seals with (SLIPWAY_SECRETS_KEY_FILE), as `slipway registry` loads it.
    const secretsKey = await loadSecretsKey(secretsKeyFile());
    env = await startBuilderEnv(redis.url, { secretsKey });
    bare = await startBuilderEnv(redis.url, { secretsKey }); // no server-wide hook secret
    served = await tempDir('git-served');
    sha = await repository(served, 'acme/private.git', { Dockerfile: 'CAT version.txt\n', 'version.txt': 'private one\n' });
    gitServer = await serveGitHttp(served, { username: 'ci', password: token });
  });

  after(async () => {
    await gitServer?.close();
    await env?.close();
    await bare?.close();
    await redis?.release();
  });

  const slipway = (e: BuilderEnv, args: string[]) =>
    run(process.execPath, [STAND_IN, 'cli', ...args, '--redis', e.redisUrl], { env: { SLIPWAY_REDIS_PREFIX: e.prefix } });

  test('#3 trigger add --secret stores no secret in clear in Redis; signed hooks still verify; trigger ls shows only "set"', async () => {
    const add = await slipway(env, ['trigger', 'add', '--repo', 'acme/sealed', '--tag', `${env.host}/acme/sealed:{short}`, '--secret', secret]);
    assert.equal(add.code, 0, add.stderr);
    const stored = JSON.stringify(await env.queue.redis.hgetall(`${env.prefix}:triggers`));
    assert.ok(!stored.includes(secret), stored);
    assert.match(stored, /sealed:v1:/);
    const ls = await slipway(env, ['trigger', 'ls']);
    assert.equal(ls.code, 0, ls.stderr);
    assert.ok(!ls.stdout.includes(secret), ls.stdout);
    assert.match(ls.stdout, /acme\/sealed +main +\S+ +Dockerfile +set\b/);
    const payload = push('acme/sealed', sha, gitServer.url('acme/private.git'));
    const forged = await sendHook(env.url, payload, signed(payload, 'not-the-secret'));
    assert.equal(forged.status, 401);
    const ok = await sendHook(env.url, payload, signed(payload, secret));
    assert.equal(ok.status, 202, ok.text);
    assert.equal(ok.body.builds?.length, 1);
  });

  test('#3 a trigger stored in clear by an older version is sealed the first time a hook reads it', async () => {
    const field = 'acme/legacy#main';
    const legacy = { repo: 'acme/legacy', branch: 'main', tags: [`${env.host}/acme/legacy:x`], dockerfile: 'Dockerfile', secret, createdAt: new Date().toISOString() };
    await env.queue.redis.hset(`${env.prefix}:triggers`, field, JSON.stringify(legacy));
    const payload = push('acme/legacy', sha, gitServer.url('acme/private.git'));
    const ok = await sendHook(env.url, payload, signed(payload, secret));
    assert.equal(ok.status, 202, ok.text);
    const now = (await env.queue.redis.hget(`${env.prefix}:triggers`, field)) ?? '';
    assert.ok(!now.includes(secret), now);
    assert.match(now, /"secret":"sealed:v1:/);
  });

  test('#9 a clone URL with user:token builds through the credentials; the token is in no record, log, listing or Redis hash', async () => {
    const withToken = gitServer.url('acme/private.git').replace('http://', `http://ci:${token}@`);
    const add = await slipway(env, ['trigger', 'add', '--repo', withToken, '--tag', `${env.host}/acme/private:{short}`, '--secret', secret]);
    assert.equal(add.code, 0, add.stderr);
    assert.ok(!add.stdout.includes(token), add.stdout);
    const stored = JSON.stringify(await env.queue.redis.hgetall(`${env.prefix}:triggers`));
    assert.ok(!stored.includes(token), stored);
    const ls = await slipway(env, ['trigger', 'ls']);
    assert.ok(!ls.stdout.includes(token), ls.stdout);
    assert.match(ls.stdout, new RegExp(`${gitServer.url('acme/private.git').replace(/\./g, '\\.')} +main .* set +set`));
    const payload = push('acme/private', sha, gitServer.url('acme/private.git'));
    const sent = await sendHook(env.url, payload, signed(payload, secret));
    assert.equal(sent.status, 202, sent.text);
    const id = sent.body.builds![0]!.id;
    const worker = await env.worker();
    try {
      const done = await env.waitFor(id, ['succeeded', 'failed'], 30_000);
      const log = await env.log(id);
      assert.equal(done.status, 'succeeded', log);
      assert.match(log, /version\.txt: private one/);
      assert.ok(!log.includes(token), log);
      assert.equal(done.source.type === 'git' && done.source.url, gitServer.url('acme/private.git'));
      const all = await (await fetch(`${env.url}/api/builds`)).text();
      assert.ok(!all.includes(token), all);
      assert.ok(!JSON.stringify(done).includes(token));
      assert.ok(gitServer.requests.some((r) => r.authorized), 'the clone authenticated');
    } finally {
      await worker.close(true);
    }
  });

  test('#9 the worker clones with credentials given apart; a wrong password, or one left in the URL, fails without showing it', async () => {
    const dir = join(await tempDir('clone'), 'ctx');
    const lines: string[] = [];
    const log: BuildLogger = { line: (t) => lines.push(t), step: () => undefined };
    const source = { type: 'git' as const, url: gitServer.url('acme/private.git'), sha, ref: 'refs/heads/main', repository: 'acme/private' };
    await prepareSource(source, dir, log, new AbortController().signal, { gitCredentials: { username: 'ci', password: token } });
    assert.equal(await readFile(join(dir, 'version.txt'), 'utf8'), 'private one\n');
    const wrong = `wrong-${randomBytes(8).toString('hex')}`;
    const failed = await prepareSource(source, dir, log, new AbortController().signal, { gitCredentials: { username: 'ci', password: wrong } }).then(
      () => null,
      (err: Error) => err,
    );
    assert.ok(failed, 'a wrong password fails the clone');
    assert.ok(!failed.message.includes(wrong), failed.message);
    // Credentials left in a source URL are taken off it: used, and never shown.
    const inUrl = { ...source, url: source.url.replace('http://', `http://ci:${wrong}@`) };
    const failedToo = await prepareSource(inUrl, dir, log, new AbortController().signal).then(
      () => null,
      (err: Error) => err,
    );
    assert.ok(failedToo && !failedToo.message.includes(wrong), failedToo?.message);
    assert.ok(!lines.join('\n').includes(wrong) && !lines.join('\n').includes(token), lines.join('\n'));
  });

  test('#11 the same signed body under a new delivery id is answered as a duplicate; nothing more is queued', async () => {
    await slipway(env, ['trigger', 'add', '--repo', 'acme/replayed', '--tag', `${env.host}/acme/replayed:x`, '--secret', secret]);
    const payload = push('acme/replayed', sha, gitServer.url('acme/private.git'));
    const first = await sendHook(env.url, payload, signed(payload, secret));
    assert.equal(first.status, 202, first.text);
    const before = await jobCount(env);
    const replay = await sendHook(env.url, payload, signed(payload, secret));
    assert.equal(replay.status, 200, replay.text);
    assert.match(replay.body.duplicate ?? '', /already received/);
    assert.equal(await jobCount(env), before);
    const builds = (await env.queue.list()).filter((b) => b.spec.tags.includes(`${env.host}/acme/replayed:x`));
    assert.equal(builds.length, 1);
  });

  test('#19 an unsigned or forged hook gets the same answer whether or not its repository has a trigger', async () => {
    await slipway(bare, ['trigger', 'add', '--repo', 'acme/known', '--tag', `${bare.host}/acme/known:x`, '--secret', secret]);
    const known = push('acme/known', sha, gitServer.url('acme/private.git'));
    const unknown = push('acme/unknown', sha, gitServer.url('acme/private.git'));
    const forgedKnown = await sendHook(bare.url, known, signed(known, 'guess'));
    const forgedUnknown = await sendHook(bare.url, unknown, signed(unknown, 'guess'));
    assert.equal(forgedKnown.status, 401);
    assert.deepEqual([forgedUnknown.status, forgedUnknown.text], [forgedKnown.status, forgedKnown.text]);
    const unsignedKnown = await sendHook(bare.url, known, { 'X-GitHub-Event': 'push', 'X-GitHub-Delivery': randomUUID() });
    const unsignedUnknown = await sendHook(bare.url, unknown, { 'X-GitHub-Event': 'push', 'X-GitHub-Delivery': randomUUID() });
    assert.deepEqual([unsignedUnknown.status, unsignedUnknown.text], [unsignedKnown.status, unsignedKnown.text]);
    const gitlab = (repo: string) => ({ object_kind: 'push', ref: 'refs/heads/main', after: sha, project: { path_with_namespace: repo } });
    const labHeaders = () => ({ 'X-Gitlab-Event': 'Push Hook', 'X-Gitlab-Token': 'guess', 'X-Gitlab-Event-UUID': randomUUID() });
    const labKnown = await sendHook(bare.url, gitlab('acme/known'), labHeaders());
    const labUnknown = await sendHook(bare.url, gitlab('acme/unknown'), labHeaders());
    assert.deepEqual([labUnknown.status, labUnknown.text], [labKnown.status, labKnown.text]);
    assert.equal(await jobCount(bare), 0);
  });

  test('#12 a declared body over the limit is answered 413 before any of it is sent', async () => {
    const head = `POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nContent-Length: ${100 << 20}\r\n\r\n`;
    const r = await rawRequest(env.url, head, '{"ref":', 10_000);
    assert.match(r.text, /^HTTP\/1\.1 413 /, r.text);
    assert.ok(r.closed, 'the connection is closed');
  });

  test('#12 a body that stalls is cut after the idle timeout', async () => {
    const app = express();
    app.post('/hooks/git', ...gitHookHandlers({ queue: env.queue, secretsKey: await loadSecretsKey(secretsKeyFile()), bodyIdleMs: 300 }));
    const server: Server = createServer(app);
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', () => ok()));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const head = `POST /hooks/git HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nContent-Length: 1000\r\n\r\n`;
      const r = await rawRequest(url, head, '{"ref":"refs/heads/main"', 15_000);
      assert.match(r.text, /^HTTP\/1\.1 408 /, r.text);
      assert.match(r.text, /stalled/);
      assert.ok(r.closed, 'the connection is closed');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
