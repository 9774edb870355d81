import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SECRETS_KEY_ENV, loadSecretsKey, secretsKeyFile } from '../builder/seal.js';
import { STAND_IN, startBuilderEnv, type BuilderEnv } from './harness/builder-env.js';
import { serveGit, type GitDaemon } from './harness/git.js';
import { git, run } from './harness/git-http.js';
import { sharedRedis } from './harness/redis.js';

/*
 * POST /hooks/git against a real git repository served by `git daemon` on
 * loopback, events sent with curl, triggers added with `slipway trigger add`.
 */
const SECRET = 'tr1gger-s3cret';
const GLOBAL_SECRET = 'server-wide-secret';

let redis: { url: string; release(): Promise<void> };
let env: BuilderEnv;
let tmp: string;
let daemon: GitDaemon | undefined;
let repoUrl: string;
const shas: string[] = [];

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'slipway-git-'));
  // Trigger secrets are sealed: this process (the hook handler) and `slipway trigger` share one key.
  process.env[SECRETS_KEY_ENV] = join(tmp, 'secrets.key');
  redis = await sharedRedis();
  env = await startBuilderEnv(redis.url, { hookSecret: GLOBAL_SECRET, secretsKey: await loadSecretsKey(secretsKeyFile()) });
  const served = join(tmp, 'served');
  await mkdir(join(served, 'acme'), { recursive: true });
  await git(served, 'init', '-q', '--bare', '-b', 'main', 'acme/app.git');
  const work = join(tmp, 'work');
  await git(tmp, 'init', '-q', '-b', 'main', work);
  await mkdir(join(work, 'docker'));
  await writeFile(join(work, 'docker/Dockerfile.prod'), 'CAT version.txt\nLIST\n');
  for (const version of ['one', 'two']) {
    await writeFile(join(work, 'version.txt'), `${version}\n`);
    await git(work, 'add', '-A');
    await git(work, 'commit', '-q', '-m', version);
    shas.push(await git(work, 'rev-parse', 'HEAD'));
  }
  await git(work, 'push', '-q', join(served, 'acme/app.git'), 'main');
  daemon = await serveGit(served, 'acme/app.git');
  repoUrl = daemon.url('acme/app.git');
});

after(async () => {
  daemon?.stop();
  await env?.close();
  await redis?.release();
  await rm(tmp, { recursive: true, force: true });
});

function slipway(args: string[]) {
  return run(process.execPath, [STAND_IN, 'cli', ...args, '--redis', env.redisUrl], { env: { SLIPWAY_REDIS_PREFIX: env.prefix } });
}

interface Sent {
  status: number;
  body: { error?: string; builds?: { id: string; tags: string[]; sha: string }[]; ignored?: string };
}

/** Sends a webhook with curl; `headers` as curl -H values. */
async function curl(payload: unknown, headers: string[]): Promise<Sent> {
  const file = join(tmp, `payload-${randomUUID()}.json`);
  await writeFile(file, JSON.stringify(payload));
  const out = join(tmp, `reply-${randomUUID()}.json`);
  const args = ['-s', '-o', out, '-w', '%{http_code}', '-H', 'Content-Type: application/json', ...headers.flatMap((h) => ['-H', h])];
  const r = await run('curl', [...args, '--data-binary', `@${file}`, `${env.url}/hooks/git`]);
  const { readFile } = await import('node:fs/promises');
  return { status: Number(r.stdout), body: JSON.parse((await readFile(out, 'utf8')) || '{}') as Sent['body'] };
}

const sign = (payload: unknown, secret = SECRET) => createHmac('sha256', secret).update(JSON.stringify(payload)).digest('hex');

/** A push event; each one unique, as real ones are (a body seen before is refused as a replay). */
function githubPush(sha: string, repo = 'acme/app') {
  const repository = { full_name: repo, clone_url: repoUrl, html_url: `http://git.example.invalid/${repo}` };
  return { ref: 'refs/heads/main', before: shas[0], after: sha, repository, pusher: { name: 't' }, head_commit: { id: sha, message: randomUUID() } };
}

function github(payload: unknown, secret = SECRET, delivery = randomUUID()): string[] {
  return ['X-GitHub-Event: push', `X-GitHub-Delivery: ${delivery}`, `X-Hub-Signature-256: sha256=${sign(payload, secret)}`];
}

async function assertQueue(jobs: number): Promise<void> {
  const counts = await env.queue.counts();
  assert.equal(Object.values(counts).reduce((a, b) => a + b, 0), jobs, JSON.stringify(counts));
  assert.equal((await env.queue.list()).length, jobs);
}

describe('git webhooks', () => {
  test('slipway trigger add | ls | rm', async () => {
    const add = await slipway(['trigger', 'add', '--repo', 'acme/app', '--branch', 'main', '--tag', `${env.host}/acme/app:{branch}-{short}`, '--tag', `${env.host}/acme/app:latest`, '--dockerfile', 'docker/Dockerfile.prod', '--secret', SECRET]);
    assert.equal(add.code, 0, add.stderr);
    const other = await slipway(['trigger', 'add', '--repo', 'git://127.0.0.1:1/other.git', '--tag', `${env.host}/other:x`]);
    assert.equal(other.code, 0, other.stderr);
    const ls = await slipway(['trigger', 'ls']);
    assert.match(ls.stdout, /^REPOSITORY +BRANCH +TAGS +DOCKERFILE +SECRET +CREDENTIALS\n/);
    assert.match(ls.stdout, /acme\/app +main +\S+acme\/app:\{branch\}-\{short\},\S+:latest +docker\/Dockerfile\.prod +set +-/);
    assert.doesNotMatch(ls.stdout, new RegExp(SECRET));
    assert.equal((await slipway(['trigger', 'rm', '--repo', 'git://127.0.0.1:1/other.git/'])).code, 0);
    const rmAgain = await slipway(['trigger', 'rm', '--repo', 'git://127.0.0.1:1/other.git']);
    assert.equal(rmAgain.code, 1);
    assert.match(rmAgain.stderr, /no trigger for git:\/\/127\.0\.0\.1:1\/other\.git/);
    const bad = await slipway(['trigger', 'add', '--repo', 'acme/app', '--tag', 'not a tag']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /invalid image tag "not a tag"/);
  });

  test('forged, unsigned, unknown-repository and replayed webhooks are refused; nothing is queued', async () => {
    const payload = githubPush(shas[0]!);
    const forged = await curl(payload, github(payload, 'wrong-secret'));
    assert.equal(forged.status, 401);
    assert.match(forged.body.error ?? '', /not signed with the secret configured/);
    const unsigned = await curl(payload, ['X-GitHub-Event: push', `X-GitHub-Delivery: ${randomUUID()}`]);
    assert.equal(unsigned.status, 401);
    const tampered = await curl({ ...payload, after: shas[1] }, github(payload));
    assert.equal(tampered.status, 401);
    const unknown = githubPush(shas[0]!, 'acme/unknown');
    const u = await curl(unknown, github(unknown, GLOBAL_SECRET));
    assert.equal(u.status, 404);
    assert.match(u.body.error ?? '', /no build trigger for repository acme\/unknown/);
    const gitlabForged = await curl({ object_kind: 'push', ref: 'refs/heads/main', after: shas[0], project: { path_with_namespace: 'acme/app', git_http_url: repoUrl } }, [
      'X-Gitlab-Event: Push Hook',
      'X-Gitlab-Token: guess',
      `X-Gitlab-Event-UUID: ${randomUUID()}`,
    ]);
    assert.equal(gitlabForged.status, 401);
    await assertQueue(0);
    // Replay: the same delivery id twice; the second is refused with 409 Conflict.
    const delivery = randomUUID();
    const first = await curl(payload, github(payload, SECRET, delivery));
    assert.equal(first.status, 202, JSON.stringify(first.body));
    const replay = await curl(payload, github(payload, SECRET, delivery));
    assert.equal(replay.status, 409);
    assert.match(replay.body.error ?? '', /already received/);
    await assertQueue(1);
    await env.queue.queue.obliterate({ force: true });
  });

  test('a signed push builds that exact commit with the mapped tag and Dockerfile', async () => {
    const payload = githubPush(shas[0]!); // the older commit, not the branch head
    const sent = await curl(payload, github(payload));
    assert.equal(sent.status, 202, JSON.stringify(sent.body));
    const [build] = sent.body.builds!;
    assert.deepEqual(build!.tags, [`${env.host}/acme/app:main-${shas[0]!.slice(0, 12)}`, `${env.host}/acme/app:latest`]);
    await env.worker();
    const r = await env.waitFor(build!.id, ['succeeded', 'failed'], 30_000);
    assert.equal(r.status, 'succeeded', await env.log(build!.id));
    assert.equal(r.origin, 'hook');
    assert.equal(r.spec.dockerfile, 'docker/Dockerfile.prod');
    assert.deepEqual(r.source, { type: 'git', url: repoUrl, sha: shas[0], ref: 'refs/heads/main', repository: 'acme/app' });
    const log = await env.log(build!.id);
    assert.match(log, /version\.txt: one\n/);
    assert.match(log, /files: docker\/Dockerfile\.prod version\.txt\n/);
    const head = await fetch(`${env.url}/v2/acme/app/manifests/main-${shas[0]!.slice(0, 12)}`, { method: 'HEAD' });
    assert.equal(head.headers.get('docker-content-digest'), r.imageDigest);
  });

  test('GitLab and Gitea events (same format, other headers) are accepted', async () => {
    const lab = { object_kind: 'push', ref: 'refs/heads/main', after: shas[1], checkout_sha: shas[1], project: { path_with_namespace: 'acme/app', git_http_url: repoUrl } };
    const a = await curl(lab, ['X-Gitlab-Event: Push Hook', `X-Gitlab-Token: ${SECRET}`, `X-Gitlab-Event-UUID: ${randomUUID()}`]);
    assert.equal(a.status, 202, JSON.stringify(a.body));
    const tea = githubPush(shas[1]!);
    const b = await curl(tea, ['X-Gitea-Event: push', `X-Gitea-Delivery: ${randomUUID()}`, `X-Gitea-Signature: ${sign(tea)}`]);
    assert.equal(b.status, 202, JSON.stringify(b.body));
    for (const id of [a.body.builds![0]!.id, b.body.builds![0]!.id]) {
      const r = await env.waitFor(id, ['succeeded', 'failed'], 30_000);
      assert.equal(r.status, 'succeeded', await env.log(id));
      assert.match(await env.log(id), /version\.txt: two\n/);
    }
    const ping = { zen: 'hi', repository: { full_name: 'acme/app' } };
    const p = await curl(ping, ['X-GitHub-Event: ping', `X-GitHub-Delivery: ${randomUUID()}`, `X-Hub-Signature-256: sha256=${sign(ping)}`]);
    assert.equal(p.status, 200);
  });

  test('a commit that does not exist fails the build with a clear message, without retries', async () => {
    const missing = 'deadbeef'.repeat(5);
    const payload = githubPush(missing);
    const sent = await curl(payload, github(payload));
    assert.equal(sent.status, 202);
    const id = sent.body.builds![0]!.id;
    const r = await env.waitFor(id, ['succeeded', 'failed'], 30_000);
    assert.equal(r.status, 'failed');
    assert.equal(r.error?.kind, 'user');
    assert.match(r.error?.message ?? '', new RegExp(`commit ${missing} does not exist in ${repoUrl.replace(/\./g, '\\.')}`));
    assert.equal(r.attempts, 1);
  });
});
