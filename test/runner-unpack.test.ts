import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, link, lstat, mkdir, readFile, readdir, readlink, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { mountPoints, mountRootfs, unmountRootfs } from '../runner/overlay.js';
import { UnsafeLayerError, unpackLayer } from '../runner/unpack.js';
import { hostileCases, layerOf } from './harness/hostile-layers.js';
import { tempDir } from './harness/registry.js';

/*
 * Layer unpacking on real files: a layer made by GNU tar from a real directory keeps what
 * it should; crafted layers give overlayfs whiteouts that really hide files when mounted;
 * hostile layers are refused, naming the entry, with nothing written outside.
 */
const run = promisify(execFile);
let work: string;

before(async () => {
  work = await tempDir('slipway-unpack-');
});

after(async () => {
  const left = (await mountPoints()).filter((m) => m.startsWith(work));
  for (const m of left) await unmountRootfs(m);
  await rm(work, { recursive: true, force: true });
  assert.deepEqual(left, [], 'a test left a mount behind');
  await assert.rejects(stat(work), 'work directory left behind');
});

const fresh = (name: string): string => join(work, `${name}-${randomBytes(4).toString('hex')}`);

async function getfattr(path: string, name: string): Promise<string> {
  const { stdout } = await run('getfattr', ['-h', '--absolute-names', '-e', 'hex', '-n', name, path]);
  return /=0x([0-9a-f]*)/.exec(stdout)?.[1] ?? '';
}

/** GNU tar of `dir` with xattrs, numeric owners and the given compression. */
async function gnuTar(dir: string, gzip: boolean): Promise<Buffer> {
  const args = ['--create', '--file=-', '--xattrs', '--xattrs-include=*', '--numeric-owner', `--directory=${dir}`, '.'];
  if (gzip) args.unshift('--gzip');
  const { stdout } = await run('tar', args, { encoding: 'buffer', maxBuffer: 64 << 20 });
  return stdout;
}

test('a layer made by GNU tar keeps modes, owners, links, mtimes, devices and xattrs', async () => {
  const src = fresh('src');
  await mkdir(join(src, 'bin'), { recursive: true });
  await mkdir(join(src, 'private'));
  await chmod(join(src, 'private'), 0o700);
  await writeFile(join(src, 'bin', 'su'), '#!/bin/sh\n');
  await chmod(join(src, 'bin', 'su'), 0o4755);
  await writeFile(join(src, 'owned'), 'mine\n');
  await chown(join(src, 'owned'), 1234, 5678);
  await writeFile(join(src, 'h1'), 'linked\n');
  await link(join(src, 'h1'), join(src, 'h2'));
  await symlink('/etc/passwd', join(src, 'abs-link'));
  await symlink('bin/su', join(src, 'rel-link'));
  await writeFile(join(src, 'tagged'), 'x');
  await run('setfattr', ['-n', 'user.slipway', '-v', 'hello', join(src, 'tagged')]);
  await run('setfattr', ['-n', 'user.binary', '-v', '0x80ff0001c3', join(src, 'tagged')]);
  await run('mknod', [join(src, 'null'), 'c', '1', '3']);
  await run('mknod', [join(src, 'pipe'), 'p']);
  const old = new Date('2001-02-03T04:05:06Z');
  await utimes(join(src, 'owned'), old, old);
  await utimes(join(src, 'private'), old, old);

  const dest = fresh('layer');
  const result = await unpackLayer(Readable.from([await gnuTar(src, true)]), dest, 'sha256:test');
  assert.match(result.diffId, /^sha256:[a-f0-9]{64}$/);

  assert.equal((await stat(join(dest, 'bin', 'su'))).mode & 0o7777, 0o4755, 'setuid kept');
  assert.equal((await stat(join(dest, 'private'))).mode & 0o7777, 0o700);
  assert.equal((await stat(join(dest, 'private'))).mtime.toISOString(), old.toISOString(), 'directory mtime kept');
  const owned = await stat(join(dest, 'owned'));
  assert.deepEqual([owned.uid, owned.gid], [1234, 5678]);
  assert.equal(owned.mtime.toISOString(), old.toISOString());
  const [h1, h2] = [await stat(join(dest, 'h1')), await stat(join(dest, 'h2'))];
  assert.equal(h1.ino, h2.ino, 'hard links share the inode');
  assert.equal(h1.nlink, 2);
  assert.equal(await readlink(join(dest, 'abs-link')), '/etc/passwd');
  assert.equal(await readlink(join(dest, 'rel-link')), 'bin/su');
  assert.equal(await getfattr(join(dest, 'tagged'), 'user.slipway'), Buffer.from('hello').toString('hex'));
  assert.equal(await getfattr(join(dest, 'tagged'), 'user.binary'), '80ff0001c3', 'binary xattr bytes kept exactly');
  const nul = await lstat(join(dest, 'null'));
  assert.ok(nul.isCharacterDevice());
  assert.equal(nul.rdev, (1 << 8) | 3);
  assert.ok((await lstat(join(dest, 'pipe'))).isFIFO());
});

test('plain and gzip layers unpack alike; zstd is refused with a clear error', async () => {
  const entries = [{ name: 'etc/hello', body: 'hi\n' }];
  const plain = await layerOf(entries, { gzip: false });
  const gz = await layerOf(entries);
  const a = await unpackLayer(Readable.from([plain.bytes]), fresh('plain'), plain.digest);
  const b = await unpackLayer(Readable.from([gz.bytes]), fresh('gzip'), gz.digest);
  assert.equal(a.diffId, plain.diffId);
  assert.equal(b.diffId, gz.diffId);
  const zstd = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), randomBytes(64)]);
  const dest = fresh('zstd');
  await assert.rejects(unpackLayer(Readable.from([zstd]), dest, 'sha256:zz'), /zstd-compressed.*gzip/);
  await assert.rejects(stat(dest), 'the refused layer left its directory');
});

test('later entries replace earlier ones; hard links reach files still being written', async () => {
  const big = randomBytes(300 << 10);
  const layer = await layerOf([
    { name: 'f', body: 'one' },
    { name: 'f', body: 'two' },
    { name: 'big', body: big, mode: 0o751 },
    { name: 'hl-big', type: 'link', linkname: 'big' },
    { name: 'hl-f', type: 'link', linkname: './f' },
    { name: 'd/', type: 'directory' },
    { name: 'd/x', body: 'x' },
    { name: 'd', body: 'now a file' },
    { name: 'gone/', type: 'directory' },
    { name: '.wh.gone', body: '' },
    { name: 's', type: 'symlink', linkname: 'f' },
    { name: 's/', type: 'directory', mode: 0o750 },
    { name: 's/inner', body: 'inner' },
  ]);
  const dest = fresh('replace');
  const result = await unpackLayer(Readable.from([layer.bytes]), dest, layer.digest);
  assert.equal(result.entries, 13);
  assert.ok((await lstat(join(dest, 'gone'))).isCharacterDevice(), 'a directory whited out later in the same layer');
  assert.equal(await readFile(join(dest, 'f'), 'utf8'), 'two');
  assert.ok((await readFile(join(dest, 'big'))).equals(big));
  assert.equal((await stat(join(dest, 'big'))).mode & 0o7777, 0o751);
  assert.equal((await stat(join(dest, 'hl-big'))).ino, (await stat(join(dest, 'big'))).ino);
  assert.equal((await stat(join(dest, 'hl-f'))).ino, (await stat(join(dest, 'f'))).ino);
  assert.equal(await readFile(join(dest, 'd'), 'utf8'), 'now a file');
  const s = await lstat(join(dest, 's'));
  assert.ok(s.isDirectory() && (s.mode & 0o7777) === 0o750, 'the symlink was replaced by a real directory');
  assert.equal(await readFile(join(dest, 's', 'inner'), 'utf8'), 'inner');
});

test('whiteouts and opaque directories hide lower files when mounted as overlay', async () => {
  const lower = await layerOf([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/gone', body: 'deleted above\n' },
    { name: 'etc/kept', body: 'kept\n' },
    { name: 'opq/', type: 'directory' },
    { name: 'opq/old1', body: '1\n' },
    { name: 'opq/old2', body: '2\n' },
  ]);
  const upper = await layerOf([
    { name: 'etc/.wh.gone', body: '' },
    { name: 'opq/', type: 'directory' },
    { name: 'opq/.wh..wh..opq', body: '' },
    { name: 'opq/new', body: 'new\n' },
  ]);
  const [lowerDir, upperDir] = [fresh('lower'), fresh('upper')];
  await unpackLayer(Readable.from([lower.bytes]), lowerDir, lower.digest);
  await unpackLayer(Readable.from([upper.bytes]), upperDir, upper.digest);

  const wh = await lstat(join(upperDir, 'etc', 'gone'));
  assert.ok(wh.isCharacterDevice() && wh.rdev === 0, 'whiteout is a 0/0 character device');
  await assert.rejects(lstat(join(upperDir, 'etc', '.wh.gone')), 'no .wh. file is left');
  await assert.rejects(lstat(join(upperDir, 'opq', '.wh..wh..opq')));
  assert.equal(await getfattr(join(upperDir, 'opq'), 'trusted.overlay.opaque'), Buffer.from('y').toString('hex'));

  const mounted = await mountRootfs([lowerDir, upperDir], fresh('container'));
  try {
    assert.deepEqual((await readdir(join(mounted.rootfs, 'etc'))).sort(), ['kept']);
    assert.deepEqual(await readdir(join(mounted.rootfs, 'opq')), ['new']);
    await writeFile(join(mounted.rootfs, 'etc', 'written'), 'w\n');
    assert.equal(await readFile(join(mounted.upper, 'etc', 'written'), 'utf8'), 'w\n', 'writes land in the upper dir');
  } finally {
    await mounted.unmount();
  }
  assert.ok(!(await mountPoints()).includes(mounted.rootfs));
  await mounted.unmount(); // a second unmount is not an error
});

test('overlay mounts: no layers (scratch), and more layers than fit in one page of paths', async () => {
  const scratch = await mountRootfs([], fresh('scratch'));
  try {
    assert.deepEqual(await readdir(scratch.rootfs), []);
  } finally {
    await scratch.unmount();
  }
  const layers: string[] = [];
  for (let i = 0; i < 70; i++) {
    const dir = join(fresh(`layer-with-a-rather-long-name-to-overflow-the-mount-options-${'x'.repeat(20)}`), 'fs');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, `file${i}`), `${i}\n`);
    await writeFile(join(dir, 'top'), `${i}\n`);
    layers.push(dir);
  }
  assert.ok(layers.join(':').length > 4096);
  const many = await mountRootfs(layers, fresh('many'));
  try {
    assert.equal((await readdir(many.rootfs)).length, 71);
    assert.equal(await readFile(join(many.rootfs, 'top'), 'utf8'), '69\n', 'the last layer is on top');
  } finally {
    await many.unmount();
  }
});

for (const [i, hostile] of hostileCases('CANARY', '/ABS').entries()) {
  test(`hostile layer refused: ${hostile.title}`, async () => {
    const base = fresh(`hostile${i}`);
    const canary = join(base, 'canary');
    const absolute = `/slipway-abs-${randomBytes(6).toString('hex')}`;
    await mkdir(canary, { recursive: true });
    await writeFile(join(canary, 'secret'), 'secret\n');
    await mkdir(join(base, 'layers', 'x'), { recursive: true });
    // Re-made with this test's real canary and absolute path.
    const real = hostileCases(canary, absolute)[i]!;
    const layer = await layerOf(real.entries);
    const dest = join(base, 'layers', 'x', 'fs');

    const err = await unpackLayer(Readable.from([layer.bytes]), dest, layer.digest).then(
      () => assert.fail('the hostile layer was unpacked'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof UnsafeLayerError, String(err));
    assert.equal(err.entry, real.offending);
    assert.ok(err.message.includes(`layer ${layer.digest}: entry "${real.offending}"`), err.message);

    await assert.rejects(stat(dest), 'the refused layer left its directory');
    assert.deepEqual(await readdir(join(base, 'layers', 'x')), [], 'nothing beside the layer dir');
    assert.deepEqual((await readdir(base)).sort(), ['canary', 'layers'], 'nothing written next to it');
    assert.deepEqual(await readdir(canary), ['secret'], 'canary untouched');
    const secret = await stat(join(canary, 'secret'));
    assert.equal(secret.nlink, 1, 'no hard link made to the canary');
    assert.equal(await readFile(join(canary, 'secret'), 'utf8'), 'secret\n');
    await assert.rejects(stat(absolute), 'absolute path created');
    await assert.rejects(stat('/etc/ok'));
  });
}
