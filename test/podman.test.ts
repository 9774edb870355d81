import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OCI, writeImageLayout, writeIndexLayout } from './harness/oci-layout.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './harness/registry.js';

/*
 * podman (Debian 12's 4.3) against a real `slipway registry` process, with
 * storage, run state and configuration of its own under a temporary directory
 * so the machine's containers are never touched. Images reach the registry
 * with skopeo from OCI layouts written by the harness.
 */
const PODMAN = '/usr/bin/podman';
const SKOPEO = '/usr/bin/skopeo';
const TOOL_TIMEOUT_MS = 180_000;
/** Without these limits `podman run` fails in this environment. */
const RUN_LIMITS = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096'];

let registry: RegistryProcess;
let work: string;

before(async () => {
  registry = await startRegistryProcess();
  work = await tempDir('slipway-podman-');
  await writeFile(join(work, 'policy.json'), JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }));
  await writeFile(join(work, 'registries.conf'), '');
});

after(async () => {
  await registry?.cleanup();
  if (!work) return;
  await unmountUnder(work);
  await rm(work, { recursive: true, force: true });
  assert.deepEqual(await mountsUnder(work), [], 'podman mounts left behind');
  await assert.rejects(stat(work), 'podman temporary directory left behind');
});

const randomRepo = (): string => `e2e/podman-${randomBytes(4).toString('hex')}`;

function run(file: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const opts = { timeout: TOOL_TIMEOUT_MS, maxBuffer: 16 << 20, env: { ...process.env, ...env } };
    execFile(file, args, opts, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** podman with every piece of state under `work`; `--signature-policy` is hidden but honoured by pull and push. */
function podman(args: string[]): Promise<string> {
  const global = [
    '--root', join(work, 'root'),
    '--runroot', join(work, 'runroot'),
    '--tmpdir', join(work, 'tmp'),
    '--storage-driver', 'vfs',
    '--cgroup-manager', 'cgroupfs',
    '--events-backend', 'file',
  ];
  return run(PODMAN, [...global, ...args], { CONTAINERS_REGISTRIES_CONF: join(work, 'registries.conf') });
}

const skopeo = (args: string[]): Promise<string> => run(SKOPEO, ['--insecure-policy', ...args]);

async function servedDigest(repo: string, reference: string, accept: string = OCI.manifest): Promise<string> {
  const res = await fetch(`${registry.url}/v2/${repo}/manifests/${reference}`, { method: 'HEAD', headers: { Accept: accept } });
  assert.equal(res.status, 200, `HEAD ${repo}:${reference}`);
  const digest = res.headers.get('docker-content-digest');
  assert.ok(digest, `HEAD ${repo}:${reference} has no Docker-Content-Digest`);
  return digest;
}

interface PodmanImage {
  Id: string;
  Digest: string;
  RepoDigests: string[];
  RepoTags: string[];
  Architecture: string;
  Config: { Cmd?: string[] };
}

async function podmanInspect(ref: string): Promise<PodmanImage> {
  const [image] = JSON.parse(await podman(['image', 'inspect', ref])) as PodmanImage[];
  assert.ok(image, `podman inspect ${ref} returned nothing`);
  return image;
}

/** The digest `podman images --digests` lists for `ref`. */
async function listedDigest(ref: string): Promise<string | undefined> {
  const images = JSON.parse(await podman(['images', '--digests', '--format', 'json'])) as { Names?: string[]; Digest: string }[];
  return images.find((i) => i.Names?.includes(ref))?.Digest;
}

test('podman pulls what skopeo pushed, pushes it to another repository and pulls that back', { timeout: TOOL_TIMEOUT_MS * 8 }, async () => {
  const repoA = randomRepo();
  const repoB = randomRepo();
  const refA = `${registry.host}/${repoA}:v1`;
  const refB = `${registry.host}/${repoB}:v2`;
  const image = await writeImageLayout(join(work, 'layout'), { tag: 'v1', label: repoA, cmd: ['/bin/echo', 'hi'] });
  await skopeo(['copy', '--dest-tls-verify=false', `oci:${join(work, 'layout')}:v1`, `docker://${refA}`]);
  const digestA = await servedDigest(repoA, 'v1');
  assert.equal(digestA, image.manifest.digest);

  const pulledId = (await podman(['pull', '--tls-verify=false', '--signature-policy', join(work, 'policy.json'), refA])).trim();
  assert.equal(`sha256:${pulledId}`, image.config.digest, 'podman image id is the config digest');
  const a = await podmanInspect(refA);
  assert.equal(a.Digest, digestA);
  assert.ok(a.RepoDigests.includes(`${registry.host}/${repoA}@${digestA}`), `RepoDigests ${a.RepoDigests}`);
  assert.equal(a.Architecture, 'amd64');
  assert.deepEqual(a.Config.Cmd, ['/bin/echo', 'hi']);
  assert.equal(await listedDigest(refA), digestA);

  const digestFile = join(work, 'pushed-digest');
  await podman(['push', '--tls-verify=false', '--signature-policy', join(work, 'policy.json'), '--digestfile', digestFile, refA, `docker://${refB}`]);
  const digestB = await servedDigest(repoB, 'v2');
  assert.equal((await readFile(digestFile, 'utf8')).trim(), digestB);

  // Forget the local image so that pulling B transfers every blob again.
  await podman(['rmi', '--force', refA]);
  await assert.rejects(podmanInspect(refA));
  await podman(['pull', '--tls-verify=false', '--signature-policy', join(work, 'policy.json'), refB]);
  const b = await podmanInspect(refB);
  assert.equal(b.Id, pulledId);
  assert.equal(b.Digest, digestB);
  assert.ok(b.RepoDigests.includes(`${registry.host}/${repoB}@${digestB}`), `RepoDigests ${b.RepoDigests}`);
  assert.equal(await listedDigest(refB), digestB);

  const out = await podman(['run', '--rm', '--network', 'none', ...RUN_LIMITS, refB, 'echo', 'hi from slipway']);
  assert.equal(out, 'hi from slipway\n');
  await podman(['rmi', '--force', refB]);
});

test('podman pulls the linux/amd64 image of a two-platform index', { timeout: TOOL_TIMEOUT_MS * 4 }, async () => {
  const repo = randomRepo();
  const ref = `${registry.host}/${repo}:multi`;
  const { index, images } = await writeIndexLayout(join(work, 'index-layout'), { tag: 'multi', label: repo });
  await skopeo(['copy', '--all', '--dest-tls-verify=false', `oci:${join(work, 'index-layout')}:multi`, `docker://${ref}`]);
  assert.equal(await servedDigest(repo, 'multi', OCI.index), index.digest);

  const id = (await podman(['pull', '--tls-verify=false', '--signature-policy', join(work, 'policy.json'), ref])).trim();
  assert.equal(`sha256:${id}`, images[0]?.config.digest, 'the amd64 config');
  const pulled = await podmanInspect(ref);
  assert.equal(pulled.Architecture, 'amd64');
  // podman records the digest the tag resolved to: the index.
  assert.equal(pulled.Digest, index.digest);
  await podman(['rmi', '--force', ref]);
});

test('the store is sound after everything podman did', async () => {
  await registry.assertIntegrity();
});

/** Mount points at or below `dir`, deepest first (mountinfo escapes spaces as \040). */
async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((line) => line.split(' ')[4]?.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8))))
    .filter((point): point is string => point !== undefined && (point === dir || point.startsWith(`${dir}/`)))
    .sort((x, y) => y.length - x.length);
}

/** podman can leave its storage (and a container's rootfs) mounted when a run is interrupted. */
async function unmountUnder(dir: string): Promise<void> {
  for (const point of await mountsUnder(dir)) await run('umount', ['--lazy', point]).catch(() => undefined);
}
