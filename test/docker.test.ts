/**
 * End to end with the real docker engine (Debian's 20.10) against a `slipway registry` process:
 * push, pull, run, cross-repository mounts and errors, as the docker client sees them.
 * Everything is offline: base images are made from static busybox and random data.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { dockerOk, pushedDigest, sharedDocker, type Dockerd } from './harness/dockerd.js';
import { buildLayeredImage, importBusybox } from './harness/images.js';
import { startRegistryProcess, type RegistryProcess } from './harness/registry.js';

const MANIFEST_TYPES = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');
const LAYER_BYTES = 64 * 1024 * 1024;

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}
interface ImageManifest {
  mediaType: string;
  config: Descriptor;
  layers: Descriptor[];
}

let dockerd: Dockerd;
let releaseDocker: () => Promise<void> = async () => {};
let registry: RegistryProcess;
/** Every image name a test creates in the daemon; `after` removes them and checks that it did. */
const madeRefs = new Set<string>();

const hex = (bytes = 4) => randomBytes(bytes).toString('hex');
/** A repository name no other test (or earlier run) uses. */
const uniqueRepo = (leaf: string) => `t${hex()}/${leaf}`;

const docker = (args: string[]): Promise<string> => dockerOk(dockerd, args);

/** The last status docker printed for each layer, keyed by its short ID (non-TTY push output). */
function layerStatuses(output: string): Map<string, string> {
  const statuses = new Map<string, string>();
  for (const m of output.matchAll(/^([0-9a-f]{12}): (.+)$/gm)) statuses.set(m[1]!, m[2]!.trim());
  return statuses;
}

async function registryFetch(path: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${registry.url}${path}`, { ...init, headers: { Accept: MANIFEST_TYPES, ...init.headers } });
}

async function servedDigest(name: string, reference: string): Promise<string | null> {
  const res = await registryFetch(`/v2/${name}/manifests/${reference}`, { method: 'HEAD' });
  assert.equal(res.status, 200, `HEAD /v2/${name}/manifests/${reference} answered ${res.status}`);
  return res.headers.get('docker-content-digest');
}

async function servedManifest(name: string, reference: string): Promise<ImageManifest> {
  const res = await registryFetch(`/v2/${name}/manifests/${reference}`);
  assert.equal(res.status, 200, `GET /v2/${name}/manifests/${reference} answered ${res.status}`);
  return (await res.json()) as ImageManifest;
}

async function pushAndForget(local: string, remote: string): Promise<string> {
  await docker(['tag', local, remote]);
  madeRefs.add(remote);
  const digest = pushedDigest(await docker(['push', remote]));
  await docker(['rmi', remote, local]);
  const gone = await dockerd.docker(['image', 'inspect', remote]);
  assert.notEqual(gone.code, 0, `${remote} is still in the daemon after docker rmi`);
  return digest;
}

before(async () => {
  const [shared, started] = await Promise.all([sharedDocker(), startRegistryProcess()]);
  dockerd = shared.docker;
  releaseDocker = shared.release;
  registry = started;
});

after(async () => {
  try {
    if (dockerd) {
      const refs = [...madeRefs];
      if (refs.length) await dockerd.docker(['rmi', '--force', ...refs]);
      for (const ref of refs) {
        const left = await dockerd.docker(['image', 'inspect', ref]);
        assert.notEqual(left.code, 0, `cleanup left ${ref} in the daemon`);
      }
    }
  } finally {
    await registry?.cleanup();
    await releaseDocker();
  }
});

test('busybox: push, rmi, pull and run; the digest is the same everywhere', { timeout: 120_000 }, async () => {
  const name = uniqueRepo('bb');
  const local = `slipway-test-bb:${hex()}`;
  const remote = `${registry.host}/${name}:1`;
  madeRefs.add(local);
  await importBusybox(dockerd, local);

  const pushed = await pushAndForget(local, remote);
  assert.equal(await servedDigest(name, '1'), pushed, 'HEAD manifest Docker-Content-Digest differs from docker push');

  const pull = await docker(['pull', remote]);
  assert.match(pull, new RegExp(`Digest: ${pushed}`), pull);
  const repoDigest = (await docker(['inspect', '--format', '{{index .RepoDigests 0}}', remote])).trim();
  assert.equal(repoDigest, `${registry.host}/${name}@${pushed}`);

  const message = `hello from ${name}`;
  const out = await docker(['run', '--rm', '--network', 'none', remote, 'echo', message]);
  assert.equal(out, `${message}\n`);
});

/** The layered image pushed by the next test, reused by the mount test after it. */
let layered: { name: string; remote: string; digest: string } | undefined;

test('a 5-layer image of ~256 MiB keeps its manifest digest through push and pull', { timeout: 300_000 }, async () => {
  const name = uniqueRepo('layered');
  const local = `slipway-test-layered:${hex()}`;
  const remote = `${registry.host}/${name}:1`;
  madeRefs.add(local);
  const image = await buildLayeredImage(dockerd, local, { dataLayers: 4, layerBytes: LAYER_BYTES });
  assert.equal(image.layers, 5);

  const pushed = await pushAndForget(local, remote);
  assert.equal(await servedDigest(name, '1'), pushed);
  const manifest = await servedManifest(name, '1');
  assert.equal(manifest.layers.length, 5, 'the registry serves a manifest with 5 layers');

  const pull = await docker(['pull', remote]);
  assert.equal([...pull.matchAll(/: Pull complete$/gm)].length, 5, `expected 5 layers downloaded:\n${pull}`);
  const repoDigest = (await docker(['inspect', '--format', '{{index .RepoDigests 0}}', remote])).trim();
  assert.equal(repoDigest, `${registry.host}/${name}@${pushed}`);
  assert.equal((await docker(['inspect', '--format', '{{len .RootFS.Layers}}', remote])).trim(), '5');

  const size = await docker(['run', '--rm', '--network', 'none', remote, 'wc', '-c', '/data/layer4.bin']);
  assert.equal(size.trim().split(/\s+/)[0], String(LAYER_BYTES));
  layered = { name, remote, digest: pushed };
});

test('pushing the same image to a second repository mounts its layers from the first', { timeout: 180_000 }, async () => {
  assert.ok(layered, 'needs the image pushed by the previous test');
  const second = uniqueRepo('mounted');
  const remote = `${registry.host}/${second}:1`;
  await docker(['tag', layered.remote, remote]);
  madeRefs.add(remote);

  const push = await docker(['push', remote]);
  assert.equal(pushedDigest(push), layered.digest);
  const statuses = layerStatuses(push);
  assert.equal(statuses.size, 5, `expected 5 layers in docker push output:\n${push}`);
  for (const [layer, status] of statuses) assert.equal(status, `Mounted from ${layered.name}`, `layer ${layer}:\n${push}`);

  const manifest = await servedManifest(second, '1');
  for (const blob of [manifest.config, ...manifest.layers]) {
    const res = await registryFetch(`/v2/${second}/blobs/${blob.digest}`, { method: 'HEAD' });
    assert.equal(res.status, 200, `HEAD ${second} blob ${blob.digest}`);
    assert.equal(res.headers.get('content-length'), String(blob.size));
    assert.equal(res.headers.get('docker-content-digest'), blob.digest);
  }
  // The smallest blobs' bytes, read back through the second repository, hash to their digests.
  for (const blob of [manifest.config, manifest.layers[0]!]) {
    const res = await registryFetch(`/v2/${second}/blobs/${blob.digest}`);
    assert.equal(res.status, 200);
    const sum = createHash('sha256').update(Buffer.from(await res.arrayBuffer())).digest('hex');
    assert.equal(`sha256:${sum}`, blob.digest);
  }
});

test('pulling a tag that does not exist fails with manifest unknown', { timeout: 60_000 }, async () => {
  const name = uniqueRepo('bb');
  const local = `slipway-test-bb:${hex()}`;
  madeRefs.add(local);
  await importBusybox(dockerd, local);
  await pushAndForget(local, `${registry.host}/${name}:1`);

  const missing = `${registry.host}/${name}:no-such-tag`;
  madeRefs.add(missing);
  const { code, stderr } = await dockerd.docker(['pull', missing]);
  assert.notEqual(code, 0);
  assert.match(stderr, /manifest unknown|not found/i);
});

test('the registry store is intact after the docker flows', async () => {
  await registry.assertIntegrity();
});
