import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { build } from '../builder/executor.js';
import { BuildError, type BuildStep } from '../builder/types.js';
import { buildImage, layerTars, pullImage, rand, runImage, startBuildEnv, tarNames, writeContext, type BuildEnv, type BuildRun } from './harness/build-fixtures.js';
import { requireRoot } from './harness/runner.js';
import { mountPoints, mountRootfs } from '../runner/index.js';

/*
 * The executor end to end: Dockerfiles built with real runc and overlayfs on this machine,
 * pushed to a real `slipway registry` process, pulled back and run by the runner.
 */
const skip = requireRoot();
let env: BuildEnv;

before(async () => {
  if (!skip) env = await startBuildEnv();
});
after(async () => {
  await env?.cleanup();
});

const statuses = (r: BuildRun) => r.result.steps.map((s) => `${s.index}:${s.status}`);
const stepAt = (r: BuildRun, index: number): BuildStep => r.result.steps.find((s) => s.index === index)!;

async function buildFails(dockerfile: string, files: Parameters<typeof buildImage>[2] = {}, req: Parameters<typeof buildImage>[3] = {}): Promise<BuildError> {
  try {
    await buildImage(env, dockerfile, files, req);
  } catch (err) {
    assert.ok(err instanceof BuildError, `a BuildError, got ${String(err)}`);
    return err;
  }
  assert.fail('the build should have failed');
}

test('FROM scratch + COPY: only what was copied, and the static binary runs', { skip }, async () => {
  const r = await buildImage(env, 'FROM scratch\nCOPY busybox /bin/\nCOPY --chmod=640 hello.txt /srv/\nENTRYPOINT ["/bin/busybox"]\nCMD ["cat", "/srv/hello.txt"]\n', {
    busybox: { copyOf: '/bin/busybox' },
    'hello.txt': 'hello from scratch\n',
  });
  const img = await pullImage(env, r.result.tags[0]!);
  assert.deepEqual([...img.files.keys()], ['bin', 'bin/busybox', 'srv', 'srv/hello.txt']);
  assert.equal(img.files.get('srv/hello.txt')!.mode, 0o640);
  assert.equal(img.files.get('bin/busybox')!.uid, 0);
  assert.deepEqual([img.config.config.Entrypoint, img.config.config.Cmd], [['/bin/busybox'], ['cat', '/srv/hello.txt']]);
  assert.equal(img.config.rootfs.diff_ids.length, 2);
  assert.deepEqual(img.config.history!.map((h) => !!h.empty_layer), [false, false, true, true]);
  const run = await runImage(env, r.result.tags[0]!);
  assert.deepEqual([run.exitCode, run.stdout], [0, 'hello from scratch\n']);
});

test('RUN: shell and exec forms, heredocs, ENV/WORKDIR/USER/SHELL seen by later RUNs, deletions as whiteouts', { skip }, async () => {
  const df = `FROM ${env.busybox}
ENV GREETING=hello
WORKDIR /work
RUN echo "$GREETING from $(pwd)" > shell.txt
RUN ["/bin/sh", "-c", "echo exec > /work/exec.txt"]
RUN <<EOF
echo heredoc > /work/heredoc.txt
rm /etc/slipway-marker /srv/seed.txt
EOF
RUN <<EOF
#!/bin/sh
echo "script" > /work/script.txt
EOF
USER app
RUN id -u > /tmp/uid && echo "$HOME" > /tmp/home
USER root
RUN mv /tmp/uid /tmp/home /work/
SHELL ["/bin/sh", "-ec"]
RUN test "$0" = /bin/sh && echo shell-set > /work/shellform.txt
COPY <<EOF /etc/motd
welcome, $GREETING
EOF
RUN rm -rf /data && mkdir /data && echo fresh > /data/new.txt
`;
  const r = await buildImage(env, df);
  const img = await pullImage(env, r.result.tags[0]!);
  assert.equal(await img.read('work/shell.txt'), 'hello from /work\n');
  assert.equal(await img.read('work/exec.txt'), 'exec\n');
  assert.equal(await img.read('work/heredoc.txt'), 'heredoc\n');
  assert.equal(await img.read('work/script.txt'), 'script\n');
  assert.equal(await img.read('work/uid'), '1000\n');
  assert.equal(await img.read('work/home'), '/home/app\n');
  assert.equal(await img.read('work/shellform.txt'), 'shell-set\n');
  assert.equal(img.files.has('etc/slipway-marker'), false);
  assert.equal(img.files.has('srv/seed.txt'), false);
  assert.equal(img.files.has('srv'), true);
  const names = (await layerTars(env, r.result.tags[0]!)).flatMap(tarNames);
  assert.ok(names.includes('etc/.wh.slipway-marker') && names.includes('srv/.wh.seed.txt'), `whiteouts in the layers: ${names.filter((n) => n.includes('.wh.')).join(', ')}`);
  assert.ok(names.includes('data/.wh..wh..opq'), 'a directory replaced by RUN is opaque in its layer');
  assert.equal(await img.read('etc/motd'), 'welcome, hello\n');
  assert.equal(await img.read('data/new.txt'), 'fresh\n');
  assert.ok(!names.some((n) => n.includes('slipway-run-script') || n.startsWith('proc/')), 'no mount point of the RUN steps reaches a layer');
  assert.deepEqual(img.config.config.Shell, ['/bin/sh', '-ec']);
  const run = await runImage(env, r.result.tags[0]!, ['sh', '-c', 'cat /etc/slipway-marker; pwd; cat shell.txt']);
  assert.match(run.stderr, /No such file/);
  assert.equal(run.stdout, '/work\nhello from /work\n');
});

test('multi-stage: COPY --from a stage (by name and index) and an image, ARG before FROM, independent stages in parallel, --target', { skip }, async () => {
  const df = `ARG BASE=${env.busybox}
FROM \${BASE} AS one
RUN sleep 1; echo one > /one.txt
FROM \${BASE} AS two
RUN sleep 1; echo two > /two.txt
FROM \${BASE} AS unused
RUN exit 3
FROM scratch AS final
ARG BASE
COPY --from=one /one.txt /
COPY --from=1 /two.txt /
COPY --from=\${BASE} /etc/passwd /passwd
`;
  const r = await buildImage(env, df);
  const img = await pullImage(env, r.result.tags[0]!);
  assert.deepEqual([...img.files.keys()], ['one.txt', 'passwd', 'two.txt']);
  assert.equal(await img.read('two.txt'), 'two\n');
  assert.match((await img.read('passwd'))!, /^root:x:0:0/);
  assert.deepEqual(r.result.steps.filter((s) => s.stage === 'unused').map((s) => s.status), ['skipped', 'skipped']);
  // Both sleeping RUNs were running at once: each started before either finished.
  const events = r.steps.filter((s) => s.index === 3 || s.index === 5);
  const firstDone = events.findIndex((s) => s.status === 'done');
  assert.equal(events.slice(0, firstDone).filter((s) => s.status === 'running').length, 2, 'stages one and two ran in parallel');

  const two = await buildImage(env, df, {}, { context: r.context, target: 'two', tags: r.result.tags });
  const timg = await pullImage(env, two.result.tags[0]!);
  assert.equal(await timg.read('two.txt'), 'two\n');
  assert.equal(timg.files.has('one.txt'), false);
  assert.equal(stepAt(two, 5).status, 'cached', 'stage two came from the cache of the first build (same repository)');
  assert.ok(two.result.steps.filter((s) => s.stage === 'one' || s.stage === 'final').every((s) => s.status === 'skipped'));
});

test('.dockerignore with ! exceptions; COPY --chown, --chmod, --exclude', { skip }, async () => {
  const df = `FROM ${env.busybox}
COPY . /ctx/
COPY --chown=app:staff --chmod=600 conf.txt /etc/conf.txt
COPY --chown=1000 dir/ /owned/
COPY --exclude=*.tmp --exclude=sub/skip.txt dir /filtered/
RUN ls -ln /etc/conf.txt | awk '{print $1, $3, $4}' > /check.txt
`;
  const r = await buildImage(env, df, {
    '.dockerignore': '*.log\n!keep.log\nsecret/\n',
    'a.log': 'ignored',
    'keep.log': 'kept',
    'secret/key': 'no',
    'conf.txt': 'conf',
    'dir/x.txt': 'x',
    'dir/y.tmp': 'y',
    'dir/sub/skip.txt': 's',
    'dir/sub/keep.txt': 'k',
  });
  const img = await pullImage(env, r.result.tags[0]!);
  const ctx = [...img.files.keys()].filter((p) => p.startsWith('ctx/')).sort();
  assert.deepEqual(ctx, ['ctx/.dockerignore', 'ctx/Dockerfile', 'ctx/conf.txt', 'ctx/dir', 'ctx/dir/sub', 'ctx/dir/sub/keep.txt', 'ctx/dir/sub/skip.txt', 'ctx/dir/x.txt', 'ctx/dir/y.tmp', 'ctx/keep.log']);
  assert.deepEqual(img.files.get('etc/conf.txt'), { type: 'file', mode: 0o600, size: 4, uid: 1000, gid: 50 });
  assert.equal(await img.read('check.txt'), '-rw------- 1000 50\n');
  assert.deepEqual([img.files.get('owned/x.txt')!.uid, img.files.get('owned/x.txt')!.gid, img.files.get('owned/sub')!.uid], [1000, 1000, 1000]);
  assert.deepEqual([...img.files.keys()].filter((p) => p.startsWith('filtered/')).sort(), ['filtered/sub', 'filtered/sub/keep.txt', 'filtered/x.txt']);
});

test('ADD: local archives are extracted, URLs are fetched', { skip }, async () => {
  const served = 'fetched over http\n';
  const server: Server = createServer((req, res) => {
    if (req.url === '/files/tool.sh') res.writeHead(200, { 'Last-Modified': 'Wed, 01 Jan 2020 00:00:00 GMT' }).end(served);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  try {
    const ctx = await writeContext(join(env.dir, `ctx-${rand()}`), { 'tree/a/one.txt': 'one', 'tree/b.txt': 'b' });
    execFileSync('tar', ['-czf', join(ctx, 'bundle.tar.gz'), '-C', join(ctx, 'tree'), '.']);
    execFileSync('tar', ['-cf', join(ctx, 'plain.tar'), '-C', join(ctx, 'tree'), 'b.txt']);
    await writeFile(join(ctx, 'Dockerfile'), `FROM ${env.busybox}\nADD bundle.tar.gz /opt/bundle/\nADD plain.tar /opt/plain\nADD http://127.0.0.1:${port}/files/tool.sh /downloads/\nADD --chmod=755 http://127.0.0.1:${port}/files/tool.sh /usr/local/bin/tool\n`);
    const local = { options: { allowLocalUrls: true } }; // the server is on the worker's loopback
    const r = await buildImage(env, '', {}, { context: ctx, ...local });
    const img = await pullImage(env, r.result.tags[0]!);
    assert.equal(await img.read('opt/bundle/a/one.txt'), 'one');
    assert.equal(await img.read('opt/plain/b.txt'), 'b');
    assert.equal(await img.read('downloads/tool.sh'), served);
    assert.equal(img.files.get('downloads/tool.sh')!.mode, 0o600);
    assert.equal(img.files.get('usr/local/bin/tool')!.mode, 0o755);
    const again = await buildImage(env, '', {}, { context: ctx, tags: r.result.tags, ...local });
    assert.equal(again.result.imageDigest, r.result.imageDigest, 'the same bytes behind the URL: cached');
    const wrong = await buildFails(`FROM ${env.busybox}\nADD --checksum=sha256:${'0'.repeat(64)} http://127.0.0.1:${port}/files/tool.sh /t\n`, {}, local);
    assert.match(wrong.message, /^Dockerfile:2: ADD failed: http:.* has digest sha256:[a-f0-9]{64}, not the --checksum sha256:0{64}$/);
    const gone = await buildFails(`FROM ${env.busybox}\nADD http://127.0.0.1:${port}/missing /t\n`, {}, local);
    assert.match(gone.message, /^Dockerfile:2: ADD failed: cannot fetch http:.*\/missing: HTTP 404/);
  } finally {
    server.close();
  }
});

test('RUN --mount=type=cache persists between builds; secrets reach RUN but no layer, config or history', { skip }, async () => {
  const id = rand();
  const df = `FROM ${env.busybox}
RUN --mount=type=cache,target=/cache,id=${id} echo run >> /cache/count && wc -l < /cache/count | tr -d ' ' > /count.txt
ARG WANT_FILE WANT_ENV
RUN --mount=type=secret,id=file test "$(cat /run/secrets/file)" = "$WANT_FILE" && echo file-ok > /secret-file.txt
RUN --mount=type=secret,id=tok,env=TOKEN test "$TOKEN" = "$WANT_ENV" && echo env-ok > /secret-env.txt
RUN --mount=type=secret,id=file,target=/etc/app/key,required=true test -s /etc/app/key && echo target-ok > /secret-target.txt
`;
  // Values as the client sent them (the executor reads no file or variable for a secret).
  const secrets = [{ id: 'file', value: Buffer.from('s3cret-from-file') }, { id: 'tok', value: Buffer.from('s3cret-from-env') }];
  const buildArgs = { WANT_FILE: 's3cret-from-file', WANT_ENV: 's3cret-from-env' };
  const first = await buildImage(env, df, {}, { secrets, buildArgs });
  const second = await buildImage(env, df, {}, { secrets, buildArgs, noCache: true, context: first.context });
  const img = await pullImage(env, second.result.tags[0]!);
  assert.equal(await img.read('count.txt'), '2\n', 'the cache mount kept the first build\'s file');
  assert.deepEqual([await img.read('secret-file.txt'), await img.read('secret-env.txt'), await img.read('secret-target.txt')], ['file-ok\n', 'env-ok\n', 'target-ok\n']);
  assert.equal(img.files.has('cache'), false, 'the cache mount point is not in the image');
  assert.equal(img.files.has('run'), false, 'nor the secret mount points');
  assert.equal(img.files.has('etc/app'), false);
  for (const tar of await layerTars(env, second.result.tags[0]!)) assert.ok(!tar.includes('s3cret'), 'no secret in any layer');
  assert.ok(!JSON.stringify(img.config).includes('s3cret'), 'no secret in the config or its history');
  const missing = await buildFails(`FROM ${env.busybox}\nRUN --mount=type=secret,id=absent,required=true true\n`);
  assert.match(missing.message, /^Dockerfile:2: RUN failed: secret "absent" is required/);
});

test('cache: hits on rebuild, a miss after a context file changes (and why), --no-cache, and a second worker', { skip }, async () => {
  const df = `FROM ${env.busybox}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /copy.txt\nCOPY b.txt /b.txt\nCMD ["cat", "/copy.txt", "/b.txt"]\n`;
  const tag = env.ref('cached');
  const first = await buildImage(env, df, { 'a.txt': 'A\n', 'b.txt': 'B\n' }, { tags: [tag] });
  assert.equal(first.result.cacheHits, 0);
  const second = await buildImage(env, df, {}, { context: first.context, tags: [tag] });
  assert.equal(second.result.cacheHits, 3);
  assert.deepEqual(statuses(second), ['1:cached', '2:cached', '3:cached', '4:cached', '5:cached']);
  assert.equal(second.result.imageDigest, first.result.imageDigest);
  assert.ok(second.lines.some((l) => l.includes('already is')), 'the registry already had the image: nothing pushed');

  await writeFile(join(first.context, 'b.txt'), 'B2\n');
  const third = await buildImage(env, df, {}, { context: first.context, tags: [tag] });
  assert.deepEqual(statuses(third).slice(0, 4), ['1:cached', '2:cached', '3:cached', '4:done']);
  assert.equal(stepAt(third, 4).reason, 'context file b.txt changed');
  assert.ok(third.lines.some((l) => l.startsWith('#4 RUN ') && l.includes('context file b.txt changed')), 'the printed plan says why');

  // Another worker, another machine: only the registry is shared.
  const workerB = join(env.dir, `worker-b-${rand()}`);
  await writeFile(join(first.context, 'b.txt'), 'B3\n');
  const fourth = await buildImage(env, df, {}, { context: first.context, tags: [tag], workerRoot: workerB });
  assert.deepEqual(statuses(fourth).slice(0, 4), ['1:cached', '2:cached', '3:cached', '4:done']);
  const run = await runImage(env, tag);
  assert.equal(run.stdout, 'A\nB3\n');

  const fresh = await buildImage(env, df, {}, { context: first.context, tags: [tag], noCache: true });
  assert.equal(fresh.result.cacheHits, 0);
  assert.equal(stepAt(fresh, 3).status, 'done');
  assert.equal(stepAt(fresh, 2).reason, '--no-cache');
  await rm(workerB, { recursive: true, force: true });
});

test('image config: labels, ports, volumes, healthcheck, stop signal, user, workdir, request labels; ONBUILD triggers run in the child', { skip }, async () => {
  const parent = await buildImage(env, `FROM ${env.busybox}
LABEL org.example.name="parent image" version=1
EXPOSE 8080 53/udp
VOLUME /data
HEALTHCHECK --interval=10s --timeout=2s --retries=4 CMD ["wget", "-q", "localhost"]
STOPSIGNAL SIGQUIT
WORKDIR /srv
USER app
ONBUILD RUN echo triggered > /tmp/onbuild.txt
ONBUILD COPY child.txt /srv/
`, {}, { labels: { 'org.example.build': 'b1' } });
  const pc = (await pullImage(env, parent.result.tags[0]!)).config.config;
  assert.deepEqual(pc.Labels, { 'org.example.name': 'parent image', version: '1', 'org.example.build': 'b1' });
  assert.deepEqual(pc.ExposedPorts, { '8080/tcp': {}, '53/udp': {} });
  assert.deepEqual(pc.Volumes, { '/data': {} });
  assert.deepEqual(pc.Healthcheck, { Test: ['CMD', 'wget', '-q', 'localhost'], Interval: 10e9, Timeout: 2e9, Retries: 4 });
  assert.deepEqual([pc.StopSignal, pc.WorkingDir, pc.User, pc.Env, pc.Cmd], ['SIGQUIT', '/srv', 'app', ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], ['sh']]);
  assert.deepEqual(pc.OnBuild, ['RUN echo triggered > /tmp/onbuild.txt', 'COPY child.txt /srv/']);

  const child = await buildImage(env, `FROM ${parent.result.tags[0]}\nUSER root\nRUN test -f /tmp/onbuild.txt && test -f /srv/child.txt && echo ok > /srv/checked\n`, { 'child.txt': 'from the child context' });
  const img = await pullImage(env, child.result.tags[0]!);
  assert.equal(await img.read('srv/child.txt'), 'from the child context');
  assert.equal(await img.read('srv/checked'), 'ok\n');
  assert.equal(img.config.config.OnBuild, undefined, 'triggers run once, in the child');
});

test('bad input: errors name the Dockerfile line and say what to do', { skip }, async () => {
  const syntax = await buildFails(`FROM ${env.busybox}\nRUN true\nCOPPY a b\n`);
  assert.equal(syntax.message, 'Dockerfile:3: unknown instruction "COPPY" (did you mean COPY?)');
  assert.deepEqual([syntax.kind, syntax.detail.line], ['user', 3]);

  const missingImage = await buildFails(`FROM ${env.registry.host}/nope/none:1.0\nRUN true\n`);
  assert.equal(missingImage.kind, 'user');
  assert.match(missingImage.message, /^Dockerfile:1: image .*nope\/none:1\.0 not found in the registry/);

  const missingFile = await buildFails(`FROM ${env.busybox}\nCOPY missing.txt /\n`);
  assert.equal(missingFile.message, 'Dockerfile:2: COPY failed: file not found in build context: missing.txt');

  const outside = await buildFails(`FROM ${env.busybox}\nCOPY ../../etc/passwd /\n`);
  assert.equal(outside.message, 'Dockerfile:2: COPY failed: forbidden path outside the build context: ../../etc/passwd');

  const link = await buildFails(`FROM ${env.busybox}\nCOPY shadow /\n`, { shadow: { symlink: '/etc/shadow' } });
  assert.match(link.message, /^Dockerfile:2: COPY failed: shadow: shadow is a symlink to \/etc\/shadow, which is outside the build context/);

  const exit = await buildFails(`FROM ${env.busybox}\nRUN echo about to fail && exit 1\n`);
  assert.equal(exit.kind, 'user');
  assert.equal(exit.detail.exitCode, 1);
  assert.equal(exit.detail.line, 2);
  assert.match(exit.message, /^Dockerfile:2: RUN echo about to fail && exit 1 exited with code 1$/);
  assert.deepEqual(exit.detail.lastLines, ['about to fail']);

  const notFound = await buildFails(`FROM ${env.busybox}\nRUN ["/nonexistent"]\n`);
  assert.equal(notFound.detail.exitCode, 127);

  const target = await buildFails(`FROM ${env.busybox} AS a\nRUN true\n`, {}, { target: 'b' });
  assert.match(target.message, /target stage "b" could not be found; the stages are: a/);

  const unreachable = await buildFails('FROM scratch\nCOPY Dockerfile /\n', {}, { tags: ['127.0.0.1:1/x/y:z'] });
  assert.equal(unreachable.kind, 'infrastructure');
  assert.match(unreachable.message, /cannot reach registry 127\.0\.0\.1:1/);

  const chown = await buildFails(`FROM ${env.busybox}\nCOPY --chown=nobody-here Dockerfile /\n`);
  assert.match(chown.message, /^Dockerfile:2: COPY failed: unable to find user nobody-here/);
  await mkdir(join(env.dir, 'empty'), { recursive: true });
  const noDockerfile = await buildFails('', {}, { context: join(env.dir, 'empty') });
  assert.match(noDockerfile.message, /Dockerfile is not in the build context/);
});

test("RUN has no network unless the build asks for the host's; bind and tmpfs mounts leave no trace", { skip }, async () => {
  const server: Server = createServer((_req, res) => res.end('from the host loopback\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
  try {
    const isolated = await buildFails(`FROM ${env.busybox}\nRUN wget -q -O /got.txt ${url}\n`);
    assert.ok(isolated.detail.exitCode! > 0, 'no route to the host from a build without network');
    assert.match(isolated.detail.lastLines!.join('\n'), /Connection refused/);
    const refused = await buildFails(`FROM ${env.busybox}\nRUN --network=host true\n`);
    assert.match(refused.message, /^Dockerfile:2: RUN --network=host needs a build started with --network host/);
    const df = `FROM ${env.busybox}
RUN wget -q -O /got.txt ${url}
RUN --mount=type=bind,source=data,target=/mnt/data cat /mnt/data/x > /bound.txt
RUN --mount=type=tmpfs,target=/scratch touch /scratch/y && ls /scratch > /tmpfs.txt
RUN --network=none ! wget -q -O /dev/null ${url} && echo isolated > /none.txt
`;
    const r = await buildImage(env, df, { 'data/x': 'bound content\n' }, { network: 'host' });
    const img = await pullImage(env, r.result.tags[0]!);
    assert.equal(await img.read('got.txt'), 'from the host loopback\n');
    assert.equal(await img.read('bound.txt'), 'bound content\n');
    assert.equal(await img.read('tmpfs.txt'), 'y\n');
    assert.equal(await img.read('none.txt'), 'isolated\n');
    assert.equal(img.files.has('mnt'), false);
    assert.equal(img.files.has('scratch'), false);
  } finally {
    server.close();
  }
});

test('a cancelled build stops its RUN and leaves no container, mount or scratch directory', { skip }, async () => {
  const context = await writeContext(join(env.dir, `ctx-${rand()}`), { Dockerfile: `FROM ${env.busybox}\nRUN sleep 60\n` });
  const abort = new AbortController();
  const workerRoot = join(env.dir, `worker-cancel-${rand()}`);
  const started = Date.now();
  const logger = { line: () => undefined, step: (s: BuildStep) => void (s.status === 'running' && setTimeout(() => abort.abort(), 300)) };
  const req = { id: rand(), contextDir: context, dockerfile: 'Dockerfile', tags: [env.ref()], buildArgs: {}, noCache: false, network: 'none' as const, secrets: [], labels: {} };
  await assert.rejects(build(req, logger, { workerRoot, signal: abort.signal }), (e: Error) => e instanceof BuildError && /cancelled/.test(e.message));
  assert.ok(Date.now() - started < 30_000, 'the sleeping RUN was stopped');
  assert.equal(execFileSync('runc', ['--root', join(workerRoot, 'runc'), 'list', '-q'], { encoding: 'utf8' }).trim(), '');
  assert.deepEqual(await readdir(join(workerRoot, 'tmp')), []);
});

test('what a killed worker left in its directory (a mounted step, scratch) is cleaned by the next build', { skip }, async () => {
  const workerRoot = join(env.dir, `worker-crashed-${rand()}`);
  const dead = join(workerRoot, 'tmp', '4194303-0123456789abcdef');
  await mkdir(join(dead, 'lower'), { recursive: true });
  await mountRootfs([join(dead, 'lower')], dead);
  await mkdir(join(workerRoot, 'tmp', 'build-4194303-abcdef'), { recursive: true });
  await buildImage(env, 'FROM scratch\nCOPY Dockerfile /\n', {}, { workerRoot });
  assert.ok(!(await mountPoints()).some((m) => m.startsWith(workerRoot)), 'the left-over overlay was unmounted');
  assert.deepEqual(await readdir(join(workerRoot, 'tmp')), []);
});
