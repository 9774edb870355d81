import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { buildImage, pullImage, rand, startBuildEnv, writeContext, type BuildEnv, type ContextFile, type FileFacts } from './harness/build-fixtures.js';
import { requireRoot } from './harness/runner.js';

/*
 * Differential check against Debian's `buildah bud` (runc, vfs storage under a temporary root,
 * pushing to the same registry): the same Dockerfiles must give the same filesystem (paths,
 * types, modes, sizes, owners, link targets; not times) and the same Env, Cmd, Entrypoint,
 * WorkingDir, User and ExposedPorts.
 */
const skip = requireRoot();
if (!hasBuildah()) throw new Error('buildah is not installed: apt-get install buildah (test/run.sh installs it)');
let env: BuildEnv;
let storage: string[];

function hasBuildah(): boolean {
  try {
    execFileSync('buildah', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

before(async () => {
  if (skip) return;
  env = await startBuildEnv();
  storage = ['--root', join(env.dir, 'buildah-root'), '--runroot', join(env.dir, 'buildah-run'), '--storage-driver', 'vfs'];
});
after(async () => {
  if (!env) return;
  await new Promise((r) => execFile('buildah', [...storage, 'rmi', '--all', '--force'], r));
  await env.cleanup();
});

function buildah(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('buildah', [...storage, ...args], { maxBuffer: 16 << 20, timeout: 180_000 }, (err, stdout, stderr) => (err ? reject(new Error(`buildah ${args.join(' ')}: ${stderr || err.message}`)) : resolve(stdout)));
  });
}

/** Mount points buildah's RUN leaves behind when the base image lacks them (empty). */
const BUILDAH_LEFTOVERS = new Set(['etc/hostname', 'etc/hosts', 'etc/resolv.conf', 'run']);

function comparable(files: Map<string, FileFacts>, other: Map<string, FileFacts>): string[] {
  return [...files]
    .filter(([p, f]) => !(BUILDAH_LEFTOVERS.has(p) && !other.has(p) && f.size === 0))
    .map(([p, f]) => `${p} ${f.type} ${f.mode.toString(8)} ${f.size} ${f.uid}:${f.gid}${f.link ? ` -> ${f.link}` : ''}`);
}

const CONFIG_KEYS = ['Env', 'Cmd', 'Entrypoint', 'WorkingDir', 'User', 'ExposedPorts'] as const;
const configOf = (c: Record<string, unknown>) => Object.fromEntries(CONFIG_KEYS.map((k) => [k, c[k] === null || (Array.isArray(c[k]) && (c[k] as unknown[]).length === 0) || c[k] === '' ? undefined : c[k]]));

async function compare(name: string, dockerfile: string, files: Record<string, ContextFile>, prepare?: (ctx: string) => void): Promise<void> {
  const ctx = await writeContext(join(env.dir, `ctx-${name}-${rand()}`), { Dockerfile: dockerfile, ...files });
  prepare?.(ctx);
  const buildArgs = { BASE: env.busybox };
  const ours = await buildImage(env, '', {}, { context: ctx, buildArgs });
  const theirs = env.ref(`buildah-${name}`);
  await buildah(['bud', '--tls-verify=false', '--isolation', 'oci', '--runtime', 'runc', '--network', 'none', '--build-arg', `BASE=${env.busybox}`, '-t', theirs, ctx]);
  await buildah(['push', '--tls-verify=false', theirs, `docker://${theirs}`]);
  const [a, b] = [await pullImage(env, ours.result.tags[0]!), await pullImage(env, theirs)];
  assert.ok(a.files.size > 3 && b.files.size > 3, 'both images have files to compare');
  assert.deepEqual(comparable(a.files, b.files), comparable(b.files, a.files), `${name}: the filesystems match`);
  assert.deepEqual(configOf(a.config.config), configOf(b.config.config), `${name}: the configs match`);
}

test('buildah: COPY into WORKDIR, a RUN with links and deletions, metadata', { skip }, async () => {
  await compare(
    'basic',
    `ARG BASE
FROM \${BASE}
WORKDIR /app
COPY a.txt ./
COPY dir /data/
RUN mkdir -p /made && ln -s /app/a.txt /made/link && chmod 700 /made && rm /srv/seed.txt
WORKDIR /never/used
ENV A=1 B="two words"
USER app
EXPOSE 80 53/udp
ENTRYPOINT ["/bin/sh"]
CMD ["-c", "echo hi"]
`,
    { 'a.txt': 'a', 'dir/x': 'x', 'dir/sub/y': { content: 'yy', mode: 0o600 }, 'dir/run.sh': { content: '#!/bin/sh\n', mode: 0o755 } },
  );
});

test('buildah: multi-stage with ARG, COPY --from, --chown, --chmod, a replaced directory', { skip }, async () => {
  await compare(
    'stages',
    `ARG BASE
FROM \${BASE} AS build
ARG GREETING=hello
RUN mkdir -p /out/bin && echo "$GREETING" > /out/greeting && ln -s greeting /out/link && chmod 751 /out/bin
FROM \${BASE}
COPY --from=build /out /opt/
COPY --chown=app:staff files/ /home/app/files/
COPY --chmod=600 files/one.txt /secret.txt
RUN rm -rf /srv && mkdir /srv && echo new > /srv/new.txt
USER 1000
WORKDIR /home/app
CMD ["sh"]
`,
    { 'files/one.txt': '1', 'files/deep/two.txt': '22' },
  );
});

test('buildah: ADD of a local archive, .dockerignore with exceptions, COPY of the whole context', { skip }, async () => {
  await compare(
    'context',
    `ARG BASE
FROM \${BASE}
ADD bundle.tar.gz /opt/bundle/
COPY . /ctx/
RUN find /ctx | sort > /list.txt
ENTRYPOINT ["/bin/sh", "-c"]
`,
    { '.dockerignore': '*.log\n!keep.log\ntmp/\ntree/\n', 'a.log': 'no', 'keep.log': 'yes', 'tmp/x': 'no', 'src/main.c': 'int main;', 'tree/a/one.txt': 'one', 'tree/b.txt': 'b' },
    (ctx) => execFileSync('tar', ['--owner=0', '--group=0', '-czf', join(ctx, 'bundle.tar.gz'), '-C', join(ctx, 'tree'), '.']),
  );
});

test('buildah: FROM scratch, hard links, removed files and directories, env and ports', { skip }, async () => {
  await compare(
    'scratch',
    `ARG BASE
FROM \${BASE} AS tools
RUN mkdir -p /h && echo data > /h/a && ln /h/a /h/b && rm /bin/ls && rm -r /home/app && mkdir -p /var/empty
FROM scratch
COPY --from=tools /bin/busybox /bin/busybox
COPY --from=tools /h /h
ENV PATH=/bin HOME=/root
EXPOSE 8080/tcp 9090
WORKDIR /work
`,
    {},
  );
});
