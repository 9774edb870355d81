import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { availableParallelism, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { build } from '../builder/executor.js';
import { localReason } from '../builder/fetch.js';
import { BuildError, type BuildOptions, type BuildRequest } from '../builder/types.js';
import { buildEnvPerFile, buildImage, collectingLogger, pullImage, rand, runImage, writeContext, type ContextFile } from './harness/build-fixtures.js';
import { requireRoot } from './harness/runner.js';

/*
 * The builder as a sandbox on a shared machine (issue 9): the Dockerfile stays inside the
 * context (item 2), RUN steps have limits and cannot use device nodes they make (item 4), the
 * worker's root is private (items 4, 15), ADD <url> cannot reach the worker's own network
 * (item 8), and an image may hold one layer twice (item 13).
 */
const skip = requireRoot();
const buildEnv = buildEnvPerFile();

/** Builds `dockerfile` expecting a BuildError; returns it with every line the build logged. */
async function buildFails(dockerfile: string, files: Record<string, ContextFile> = {}, opts: { context?: string; dockerfile?: string; options?: Omit<BuildOptions, 'workerRoot'> } = {}): Promise<{ err: BuildError; lines: string[] }> {
  const env = buildEnv();
  const context = opts.context ?? (await writeContext(join(env.dir, `ctx-${rand()}`), { Dockerfile: dockerfile, ...files }));
  const logged = collectingLogger();
  const req: BuildRequest = { id: rand(), contextDir: context, dockerfile: opts.dockerfile ?? 'Dockerfile', tags: [env.ref()], buildArgs: {}, noCache: false, network: 'none', secrets: [], labels: {} };
  try {
    await build(req, logged.logger, { ...opts.options, workerRoot: env.workerRoot });
  } catch (err) {
    assert.ok(err instanceof BuildError, `a BuildError, got ${String(err)}`);
    return { err, lines: logged.lines };
  }
  assert.fail('the build should have failed');
}

test('#2 a Dockerfile that is a symlink out of the context (or under a linked directory) is refused, and nothing of the target is shown', { skip }, async () => {
  const env = buildEnv();
  const outside = join(env.dir, `outside-${rand()}`);
  const canary = `CANARY_${rand()} secret first line`;
  await mkdir(outside, { recursive: true });
  await writeFile(join(outside, 'x'), `${canary}\n`);
  await writeFile(join(outside, 'Dockerfile'), `${canary}\n`);

  const linked = await buildFails('', {}, { context: await writeContext(join(env.dir, `ctx-${rand()}`), { Dockerfile: { symlink: join(outside, 'Dockerfile') } }) });
  assert.equal(linked.err.kind, 'user');
  assert.match(linked.err.message, /^cannot read the Dockerfile: Dockerfile: Dockerfile is a symlink to .*, which is outside the build context; refusing to follow it$/);
  assert.ok(![linked.err.message, ...linked.lines].some((l) => l.includes('CANARY')), 'nothing of the outside file in the error or the log');

  const dir = await buildFails('', {}, { context: await writeContext(join(env.dir, `ctx-${rand()}`), { sub: { symlink: outside } }), dockerfile: 'sub/x' });
  assert.match(dir.err.message, /^cannot read the Dockerfile: sub\/x: sub is a symlink to .*, which is outside the build context/);
  assert.ok(![dir.err.message, ...dir.lines].some((l) => l.includes('CANARY')));

  const climbing = await buildFails('', {}, { context: await writeContext(join(env.dir, `ctx-${rand()}`), { Dockerfile: { symlink: `../${outside.split('/').pop()}/Dockerfile` } }) });
  assert.match(climbing.err.message, /outside the build context/);
  assert.ok(![climbing.err.message, ...climbing.lines].some((l) => l.includes('CANARY')));

  const special = await buildFails('', {}, { context: await writeContext(join(env.dir, `ctx-${rand()}`), { Dockerfile: { dir: true } }) });
  assert.match(special.err.message, /^cannot read the Dockerfile: Dockerfile is not a regular file in the build context$/);

  // A link that stays inside the context is followed, as for COPY.
  const ok = await buildImage(env, '', {}, { context: await writeContext(join(env.dir, `ctx-${rand()}`), { 'build/Dockerfile.real': 'FROM scratch\nCOPY build/Dockerfile.real /\n', Dockerfile: { symlink: 'build/Dockerfile.real' } }) });
  assert.match(ok.result.imageDigest, /^sha256:/);
});

test('#2 a .dockerignore that links out of the context is not read on the worker', { skip }, async () => {
  const env = buildEnv();
  const outside = join(env.dir, `outside-${rand()}`);
  await mkdir(outside, { recursive: true });
  // Were the outside file read, its pattern would drop kept.txt and the COPY would fail.
  await writeFile(join(outside, 'patterns'), 'kept.txt\n');
  const context = await writeContext(join(env.dir, `ctx-${rand()}`), {
    Dockerfile: 'FROM scratch\nCOPY kept.txt /\n',
    'kept.txt': 'kept\n',
    '.dockerignore': { symlink: join(outside, 'patterns') },
  });
  const r = await buildImage(env, '', {}, { context });
  assert.match(r.result.imageDigest, /^sha256:/);
  // A .dockerignore that links inside the context is followed, as docker does.
  const inside = await writeContext(join(env.dir, `ctx-${rand()}`), {
    Dockerfile: 'FROM scratch\nCOPY kept.txt /\n',
    'kept.txt': 'kept\n',
    'ignore.real': 'kept.txt\n',
    '.dockerignore': { symlink: 'ignore.real' },
  });
  const ignored = await buildFails('', {}, { context: inside });
  assert.match(ignored.err.message, /kept\.txt/);
});

/** Limits as the step's own cgroup shows them: pids.max, the memory limit, the CPU quota (µs per 100 ms period, or "max"). */
const LIMITS_SCRIPT = existsSync('/sys/fs/cgroup/cgroup.controllers')
  ? 'cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max > /limits.txt && cut -d" " -f1 /sys/fs/cgroup/cpu.max >> /limits.txt'
  : 'cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us > /limits.txt';

/** A block device of this host (major minor), as a RUN step would mknod it. */
function hostBlockDevice(): string {
  const numbers = execFileSync('ls', ['/sys/dev/block'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  return (numbers.find((n) => !n.startsWith('7:')) ?? numbers[0] ?? '7:0').replace(':', ' ');
}

test("#4 RUN steps run under the worker's limits (pids, memory, CPU quota) and cannot open a device node they make", { skip }, async () => {
  const env = buildEnv();
  const df = `FROM ${env.busybox}
RUN ${LIMITS_SCRIPT}
RUN mknod /disk b ${hostBlockDevice()} && chmod 666 /disk && (head -c 512 /disk > /dev/null 2>&1 && echo opened || echo refused) > /disk.txt && rm /disk
`;
  const limits = { memory: 300 * 1024 * 1024, pids: 123, cpus: 0.5 };
  const set = await buildImage(env, df, {}, { options: { limits } });
  const img = await pullImage(env, set.result.tags[0]!);
  assert.deepEqual((await img.read('limits.txt'))!.trim().split('\n'), ['123', String(300 * 1024 * 1024), '50000']);
  assert.equal(await img.read('disk.txt'), 'refused\n', 'the device cgroup denies reading a node the step made');

  const defaults = await pullImage(env, (await buildImage(env, df, {}, { noCache: true })).result.tags[0]!);
  assert.deepEqual((await defaults.read('limits.txt'))!.trim().split('\n'), ['4096', String(2 * 1024 ** 3), String(availableParallelism() * 100_000)]);
});

test('#4 #15 the builder root is 0700 (tightened at start, whatever the umask): what a step made is reachable by no other user', { skip }, async () => {
  const env = buildEnv();
  const parent = join(env.dir, `roots-${rand()}`);
  const workerRoot = join(parent, 'worker');
  await mkdir(workerRoot, { recursive: true });
  await chmod(env.dir, 0o755);
  await chmod(parent, 0o755);
  await chmod(workerRoot, 0o755);
  const umask = process.umask(0);
  try {
    await buildImage(env, `FROM ${env.busybox}\nRUN mknod /fifo p && chmod 666 /fifo && echo made > /made.txt\n`, {}, { workerRoot });
  } finally {
    process.umask(umask);
  }
  assert.equal((await stat(workerRoot)).mode & 0o777, 0o700);
  const layers = join(workerRoot, 'layers', 'sha256');
  const made = (await readdir(layers)).map((d) => join(layers, d, 'fs', 'fifo')).find((p) => existsSync(p));
  assert.ok(made, 'the step made its node in a layer of the worker');
  const nobody = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'stat', made], { encoding: 'utf8' });
  assert.notEqual(nobody.status, 0, 'nobody cannot reach the layer store');
  assert.match(nobody.stderr, /Permission denied/);
  for (const d of await readdir(workerRoot)) {
    const st = await stat(join(workerRoot, d));
    if (st.isDirectory()) assert.equal(st.mode & 0o777, 0o700, `${d}/ is private`);
  }
});

test("#8 ADD <url> from the worker's loopback is refused before any request; allowLocalUrls (or network=host) lets it through", { skip }, async () => {
  const env = buildEnv();
  let requests = 0;
  const server: Server = createServer((_req, res) => {
    requests++;
    res.end('{"builds":[]}\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  try {
    for (const host of ['127.0.0.1', 'localhost', '[::ffff:127.0.0.1]', '0.0.0.0']) {
      const refused = await buildFails(`FROM ${env.busybox}\nADD http://${host}:${port}/api/builds /b.json\n`);
      assert.equal(refused.err.kind, 'user');
      assert.match(refused.err.message, /^Dockerfile:2: ADD failed: refusing to fetch http:\/\/.*\/api\/builds: .* is (a loopback|an unspecified) address; ADD may not reach the build worker's own network/);
    }
    assert.equal(requests, 0, 'the loopback server saw no request');

    const allowed = await buildImage(env, `FROM ${env.busybox}\nADD http://127.0.0.1:${port}/api/builds /b.json\n`, {}, { options: { allowLocalUrls: true } });
    assert.equal(await (await pullImage(env, allowed.result.tags[0]!)).read('b.json'), '{"builds":[]}\n');
    await buildImage(env, `FROM ${env.busybox}\nADD http://localhost:${port}/host /h.json\n`, {}, { network: 'host' });
    assert.equal(requests, 2);
  } finally {
    server.close();
  }
  // Every kind of the worker's own address, and one that is not.
  const own = Object.values(networkInterfaces()).flatMap((l) => l ?? []).find((i) => !i.internal)?.address;
  for (const a of ['127.0.0.53', '::1', '::ffff:127.0.0.1', '169.254.169.254', 'fe80::1', '0.0.0.0', '::', ...(own ? [own] : [])]) assert.ok(localReason(a), `${a} is refused`);
  assert.equal(localReason('93.184.216.34'), undefined);
});

test('#13 two RUN steps with the same (empty) diff: the image holds one layer twice, builds, and runs', { skip }, async () => {
  const env = buildEnv();
  const df = 'FROM scratch\nCOPY busybox /bin/sh\nRUN ["/bin/sh","-c","true"]\nRUN ["/bin/sh","-c","true"]\nRUN ["/bin/sh","-c","echo x"]\nCMD ["/bin/sh","-c","echo ran"]\n';
  const r = await buildImage(env, df, { busybox: { copyOf: '/bin/busybox' } });
  const img = await pullImage(env, r.result.tags[0]!);
  const diffs = img.config.rootfs.diff_ids;
  assert.equal(diffs.length, 4);
  assert.equal(new Set(diffs).size, 2, 'the three RUN layers are one layer, listed three times');
  const run = await runImage(env, r.result.tags[0]!);
  assert.deepEqual([run.exitCode, run.stdout], [0, 'ran\n']);
});
