/*
 * The whole pipeline once, with nothing stood in: a signed push webhook for a
 * commit of a git repository served by `git daemon` on loopback → the real
 * executor on a BullMQ worker (RUN in runc) → an image in the registry →
 * `slipway run` pulls and starts it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { addTrigger, build } from '../builder/index.js';
import { Runner } from '../runner/index.js';
import { startBuilderEnv, type BuilderEnv } from './harness/builder-env.js';
import { serveGit, type GitDaemon } from './harness/git.js';
import { writeImageLayout } from './harness/oci-layout.js';
import { sharedRedis } from './harness/redis.js';
import { cleanupRunner, requireRoot, runnerCli } from './harness/runner.js';

const execFileP = promisify(execFile);
const SECRET = `e2e-${randomBytes(6).toString('hex')}`;
requireRoot();

let redis: { url: string; release(): Promise<void> };
let env: BuilderEnv;
let tmp: string;
let daemon: GitDaemon | undefined;
let repoUrl: string;
let sha: string;

const git = async (cwd: string, ...args: string[]): Promise<string> =>
  (await execFileP('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.invalid', ...args], { cwd })).stdout.trim();

before(async () => {
  redis = await sharedRedis();
  env = await startBuilderEnv(redis.url, { hookSecret: SECRET });
  tmp = await mkdtemp(join(tmpdir(), 'slipway-e2e-'));
  // A base image, pushed as any user would.
  await writeImageLayout(join(tmp, 'layout'), { tag: 'v1', label: randomBytes(6).toString('hex') });
  await execFileP('/usr/bin/skopeo', ['copy', '--insecure-policy', '--dest-tls-verify=false', `oci:${join(tmp, 'layout')}:v1`, `docker://${env.host}/base/busybox:v1`]);
  // The application's repository.
  const served = join(tmp, 'served');
  await mkdir(join(served, 'acme'), { recursive: true });
  await git(served, 'init', '-q', '--bare', '-b', 'main', 'acme/app.git');
  const work = join(tmp, 'work');
  await git(tmp, 'init', '-q', '-b', 'main', work);
  await writeFile(join(work, 'version.txt'), 'one\n');
  await writeFile(
    join(work, 'Dockerfile'),
    `FROM ${env.host}/base/busybox:v1\nCOPY version.txt /app/version.txt\nRUN echo "built by RUN" >> /app/version.txt\nCMD ["cat", "/app/version.txt"]\n`,
  );
  await git(work, 'add', '-A');
  await git(work, 'commit', '-q', '-m', 'one');
  sha = await git(work, 'rev-parse', 'HEAD');
  await git(work, 'push', '-q', join(served, 'acme/app.git'), 'main');
  daemon = await serveGit(served, 'acme/app.git');
  repoUrl = daemon.url('acme/app.git');
});

after(async () => {
  daemon?.stop();
  await env?.close();
  await redis?.release();
  if (tmp) await cleanupRunner(new Runner({ root: join(tmp, 'runner'), runcRoot: join(tmp, 'runc') }), tmp);
  await rm(tmp, { recursive: true, force: true });
});

test('a signed push webhook ends with an image in the registry that slipway run starts', async () => {
  const tag = `${env.host}/acme/app:latest`;
  await addTrigger(env.queue.redis, env.prefix, { repo: 'acme/app', branch: 'main', tags: [tag], dockerfile: 'Dockerfile' });
  await env.worker({ build });

  const payload = JSON.stringify({ ref: 'refs/heads/main', after: sha, repository: { full_name: 'acme/app', clone_url: repoUrl }, pusher: { name: 't' } });
  const file = join(tmp, 'payload.json');
  await writeFile(file, payload);
  const signature = createHmac('sha256', SECRET).update(payload).digest('hex');
  const reply = join(tmp, 'reply.json');
  const { stdout: status } = await execFileP('curl', [
    '-s', '-o', reply, '-w', '%{http_code}', '-H', 'Content-Type: application/json', '-H', 'X-GitHub-Event: push',
    '-H', `X-GitHub-Delivery: ${randomUUID()}`, '-H', `X-Hub-Signature-256: sha256=${signature}`,
    '--data-binary', `@${file}`, `${env.url}/hooks/git`,
  ]);
  const body = JSON.parse(await readFile(reply, 'utf8')) as { builds?: { id: string }[] };
  assert.equal(status, '202', JSON.stringify(body));
  const id = body.builds?.[0]?.id;
  assert.ok(id, JSON.stringify(body));

  const record = await env.waitFor(id, ['succeeded', 'failed'], 120_000);
  assert.equal(record.status, 'succeeded', await env.log(id));
  const head = await fetch(`${env.url}/v2/acme/app/manifests/latest`, { method: 'HEAD' });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('docker-content-digest'), record.imageDigest);

  const runEnv = { ...process.env, SLIPWAY_RUNNER_ROOT: join(tmp, 'runner'), SLIPWAY_RUNC_ROOT: join(tmp, 'runc') };
  const run = await runnerCli(['run', '--rm', '--network', 'none', tag], runEnv, 120_000);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout, 'one\nbuilt by RUN\n');
});
