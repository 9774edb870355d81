import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmod, mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { ImageStore, Runner } from '../runner/index.js';
import { layerOf, type Layer } from './harness/hostile-layers.js';
import { MT, pushBlob, putManifest, sha256 } from './harness/http.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './harness/registry.js';
import { busyboxLayer, cleanupRunner, requireRoot } from './harness/runner.js';

/*
 * The runner's root on a shared machine: pulled layers unpack device nodes exactly as the image
 * ships them, so the root must be a gate no other local user passes (issue 9, items 5 and 15);
 * and an image may list one layer twice (item 13).
 */
const skip = requireRoot();
let registry: RegistryProcess;
let base: string;
/** An image: busybox, then a layer with a world-writable block device (the host disk's numbers), that layer listed twice. */
let ref: string;
let devices: Layer;

/** A block device of this host (major:minor), as a hostile image would name it. */
function hostBlockDevice(): [number, number] {
  const numbers = execFileSync('ls', ['/sys/dev/block'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  const pick = numbers.find((n) => !n.startsWith('7:')) ?? numbers[0] ?? '7:0';
  const [major, minor] = pick.split(':').map(Number) as [number, number];
  return [major, minor];
}

before(async () => {
  if (skip) return;
  registry = await startRegistryProcess();
  base = await tempDir('slipway-runner-private-');
  // A state directory's parent as on a real host (/var/lib is 0755): only the root itself can keep others out.
  await chmod(base, 0o755);
  const rootfs = join(base, 'busybox-rootfs');
  await busyboxLayer(rootfs);
  const busyTar = execFileSync('tar', ['--create', '--file=-', `--directory=${rootfs}`, '--sort=name', '--numeric-owner', '--mtime=@0', '.'], { maxBuffer: 64 << 20 });
  const busy = gzipSync(busyTar);
  const [major, minor] = hostBlockDevice();
  devices = await layerOf([
    { name: 'disk', type: 'block-device', mode: 0o666, devmajor: major, devminor: minor },
    { name: 'etc/layer-note', body: 'in the device layer\n' },
  ]);
  const repo = `private/${Math.random().toString(16).slice(2, 10)}`;
  await pushBlob(registry.url, repo, busy);
  await pushBlob(registry.url, repo, devices.bytes);
  const diffIds = [sha256(busyTar), devices.diffId, devices.diffId];
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/bin'], Cmd: ['sh'] }, rootfs: { type: 'layers', diff_ids: diffIds } }));
  const configDigest = await pushBlob(registry.url, repo, config);
  const layer = (bytes: Buffer) => ({ mediaType: MT.ociLayer, digest: sha256(bytes), size: bytes.length });
  const manifest = { schemaVersion: 2, mediaType: MT.ociManifest, config: { mediaType: MT.ociConfig, digest: configDigest, size: config.length }, layers: [layer(busy), layer(devices.bytes), layer(devices.bytes)] };
  const r = await putManifest(registry.url, repo, 'latest', manifest);
  assert.equal(r.status, 201, r.body.toString());
  ref = `${registry.host}/${repo}:latest`;
});

after(async () => {
  await registry?.cleanup();
  if (base) await rm(base, { recursive: true, force: true });
});

/** Runs `argv` as nobody (uid/gid 65534, no groups): what any local user could do. */
function asNobody(argv: string[]): { status: number | null; stderr: string } {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', ...argv], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

/** Every path under `dir` (relative) → its permission bits and whether it is a directory. */
async function modesUnder(dir: string, rel = '', out = new Map<string, { mode: number; dir: boolean }>()): Promise<Map<string, { mode: number; dir: boolean }>> {
  for (const name of await readdir(join(dir, rel))) {
    const p = rel ? `${rel}/${name}` : name;
    const st = await stat(join(dir, p));
    out.set(p, { mode: st.mode & 0o777, dir: st.isDirectory() });
    if (st.isDirectory()) await modesUnder(dir, p, out);
  }
  return out;
}

test('#5 #15 a pulled device node is reachable by no other local user: the runner root is 0700 (tightened), its own files 0600, whatever the umask', { skip }, async () => {
  const root = join(base, 'root-pull');
  await mkdir(root, { mode: 0o755 });
  await chmod(root, 0o755); // as an operator might have made it
  const store = new ImageStore(root, { env: {} });
  const umask = process.umask(0);
  try {
    await store.pull(ref);
  } finally {
    process.umask(umask);
    store.close();
  }
  const disk = join(root, 'images', 'layers', 'sha256', devices.digest.slice(7), 'fs', 'disk');
  const st = await stat(disk);
  assert.ok(st.isBlockDevice(), 'the layer keeps its device node, as docker unpacks it');
  assert.equal((await stat(root)).mode & 0o777, 0o700, 'the runner root was tightened to 0700');
  const nobody = asNobody(['stat', disk]);
  assert.notEqual(nobody.status, 0, 'nobody cannot reach the unpacked device node');
  assert.match(nobody.stderr, /Permission denied/);
  assert.notEqual(asNobody(['ls', join(root, 'images')]).status, 0);

  // The store's own directories and files; a layer's fs/ keeps the modes its image gave it.
  const own = [...(await modesUnder(join(root, 'images')))].filter(([p]) => !/\/fs(\/|$)/.test(p));
  const loose = own.filter(([, f]) => f.mode !== (f.dir ? 0o700 : 0o600)).map(([p, f]) => `${p} ${f.mode.toString(8)}`);
  assert.deepEqual(loose, [], 'the store writes its directories 0700 and files 0600 even under umask 0');
  assert.ok(own.some(([p]) => p.endsWith('/layer.json')) && own.some(([p]) => p.startsWith('refs/')), 'files of each kind were checked');
});

test('#5 #15 the runner root is made private when a container is created', { skip }, async () => {
  const runBase = join(base, 'create');
  const root = join(runBase, 'root');
  await mkdir(root, { recursive: true, mode: 0o755 });
  await chmod(runBase, 0o755);
  await chmod(root, 0o755);
  const runner = new Runner({ root, runcRoot: join(runBase, 'runc') });
  const pulled = new ImageStore(join(base, 'root-pull'), { env: {} });
  const image = await pulled.get(ref).finally(() => pulled.close());
  assert.ok(image, 'pulled by the test before');
  try {
    const id = await runner.create({ image, cmd: ['true'], flags: { network: 'none' } });
    assert.equal((await stat(root)).mode & 0o777, 0o700);
    assert.notEqual(asNobody(['stat', runner.paths.container(id).dir]).status, 0);
  } finally {
    await cleanupRunner(runner, runBase);
  }
});

test('#13 an image whose manifest lists one layer twice runs (overlay gets each layer directory once)', { skip }, async () => {
  const runBase = join(base, 'run-twice');
  const images = new ImageStore(join(runBase, 'root'), { env: {} });
  const runner = new Runner({ root: join(runBase, 'root'), runcRoot: join(runBase, 'runc'), images });
  const out = new PassThrough();
  let stdout = '';
  out.on('data', (d: Buffer) => (stdout += d.toString()));
  try {
    const image = await images.pull(ref);
    assert.equal(image.layerDirs.length, 3);
    assert.equal(new Set(image.layerDirs).size, 2, 'the image does list one layer twice');
    const r = await runner.run({ image: ref, cmd: ['sh', '-c', 'cat /etc/layer-note && echo ran'], flags: { network: 'none' } }, { stdout: out, stderr: new PassThrough() });
    assert.deepEqual([r.exitCode, stdout], [0, 'in the device layer\nran\n']);
  } finally {
    images.close();
    await cleanupRunner(runner, runBase);
  }
});
