/*
 * An overlay upper directory → a layer blob (tar, gzip), both digests computed while writing:
 * diff_id over the tar bytes, the blob digest over the gzip bytes.
 *
 * The upper dir speaks overlayfs, the tar speaks OCI:
 *   - a character device 0/0 (overlay's whiteout: the file was deleted) → an empty `.wh.<name>`;
 *     overlay hard-links all whiteouts to one inode, so they never count as hard links;
 *   - a directory with xattr trusted.overlay.opaque=y (it replaced a lower directory) → the
 *     directory, then an empty `<dir>/.wh..wh..opq`.
 * This relies on overlay's redirect_dir and metacopy being off (the kernel defaults here; the
 * runner mounts without them), so every changed file and renamed directory is whole in upper.
 * Entries are sorted by name, parents first; hard links within the layer stay hard links.
 */
import { execFile } from 'node:child_process';
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar, { type Header, type Pack } from 'tar-stream';

type Headers = Partial<Header> & Pick<Header, 'name'>;
import { MEDIA } from './image.js';

export interface BuiltLayer {
  mediaType: string;
  /** sha256 of the gzip blob. */
  digest: string;
  size: number;
  /** sha256 of the uncompressed tar. */
  diffId: string;
  /** Where the blob was written. */
  path: string;
}

const OPAQUE_XATTR = 'trusted.overlay.opaque';

export async function writeLayer(upperDir: string, blobPath: string): Promise<BuiltLayer> {
  const upper = resolve(upperDir);
  const opaque = await opaqueDirs(upper);
  const pack = tar.pack();
  const diff = createHash('sha256');
  const blob = createHash('sha256');
  let size = 0;
  const writing = pipeline(pack, hashing(diff), createGzip({ level: 6 }), hashing(blob, (n) => (size += n)), createWriteStream(blobPath));
  writing.catch(() => undefined);
  try {
    await addTree(pack, upper, '', opaque, new Map());
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    throw err;
  }
  await writing;
  return { mediaType: MEDIA.layerGzip, digest: `sha256:${blob.digest('hex')}`, size, diffId: `sha256:${diff.digest('hex')}`, path: blobPath };
}

async function addTree(pack: Pack, root: string, rel: string, opaque: Set<string>, links: Map<string, string>): Promise<void> {
  const names = (await readdir(join(root, rel))).sort((a, b) => (Buffer.from(a) < Buffer.from(b) ? -1 : 1));
  for (const name of names) {
    const path = rel ? `${rel}/${name}` : name;
    const abs = join(root, path);
    const st = await lstat(abs);
    const base = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: new Date(Math.floor(st.mtimeMs / 1000) * 1000) };
    if (st.isCharacterDevice() && st.rdev === 0) {
      await add(pack, { ...base, name: whiteoutName(rel, name), type: 'file', size: 0, mode: 0 });
    } else if (st.isDirectory()) {
      await add(pack, { ...base, name: `${path}/`, type: 'directory' });
      if (opaque.has(path)) await add(pack, { ...base, name: `${path}/.wh..wh..opq`, type: 'file', size: 0, mode: 0 });
      await addTree(pack, root, path, opaque, links);
    } else if (st.isSymbolicLink()) {
      await add(pack, { ...base, name: path, type: 'symlink', linkname: await readlink(abs) });
    } else if (st.isFile()) {
      const id = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? links.get(id) : undefined;
      if (first !== undefined) {
        await add(pack, { ...base, name: path, type: 'link', linkname: first, size: 0 });
        continue;
      }
      if (st.nlink > 1) links.set(id, path);
      await addFile(pack, { ...base, name: path, type: 'file', size: st.size }, abs);
    } else {
      const type = st.isCharacterDevice() ? 'character-device' : st.isBlockDevice() ? 'block-device' : st.isFIFO() ? 'fifo' : undefined;
      if (!type) continue; // sockets have no tar form
      await add(pack, { ...base, name: path, type, devmajor: major(st.rdev), devminor: minor(st.rdev) });
    }
  }
}

const whiteoutName = (rel: string, name: string): string => (rel ? `${rel}/.wh.${name}` : `.wh.${name}`);

/** An entry without a body (an empty buffer: a bodiless `file` entry would wait for one). */
function add(pack: Pack, header: Headers): Promise<void> {
  return new Promise((resolve, reject) => pack.entry(header, Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
}

async function addFile(pack: Pack, header: Headers, abs: string): Promise<void> {
  await pipeline(createReadStream(abs), pack.entry(header));
}

/** Linux dev_t encoding (glibc's gnu_dev_major/minor). */
const major = (dev: number): number => Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
const minor = (dev: number): number => Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));

/** Directories under `upper` marked opaque, as paths relative to it (one getfattr for the tree). */
export function opaqueDirs(upper: string): Promise<Set<string>> {
  return new Promise((resolve, reject) => {
    execFile('getfattr', ['-R', '-P', '--absolute-names', '-n', OPAQUE_XATTR, upper], { maxBuffer: 64 << 20 }, (err, stdout) => {
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') return reject(new Error('getfattr is not installed (apt-get install attr); it reads overlayfs opaque directories'));
      const found = new Set<string>();
      let file: string | undefined;
      for (const line of stdout.split('\n')) {
        if (line.startsWith('# file: ')) file = unescapeOctal(line.slice(8));
        else if (file && line === `${OPAQUE_XATTR}="y"` && file.startsWith(`${upper}/`)) found.add(file.slice(upper.length + 1));
      }
      resolve(found);
    });
  });
}

const unescapeOctal = (s: string): string => Buffer.from(s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))), 'latin1').toString('utf8');

function hashing(hash: Hash, count?: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      count?.(chunk.length);
      cb(null, chunk);
    },
  });
}
