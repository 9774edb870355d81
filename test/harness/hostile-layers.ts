import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import tar, { type Header } from 'tar-stream';

/*
 * Layer tars built entry by entry with tar-stream, so a test can write what no honest
 * `tar` would: names with `..`, absolute names, writes through symlinks, hard links out
 * of the layer. Also plain helpers for small crafted layers (whiteouts, opaque dirs).
 */

export interface TarEntry {
  name: string;
  type?: Header['type'];
  body?: string | Buffer;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  /** For character and block devices. */
  devmajor?: number;
  devminor?: number;
}

/** The tar archive of `entries`, in order, held in memory (they are tiny). */
export async function tarOf(entries: TarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<Buffer>((resolve, reject) => {
    pack.on('data', (c: unknown) => chunks.push(c as Buffer));
    pack.on('end', () => resolve(Buffer.concat(chunks)));
    pack.on('error', reject);
  });
  for (const e of entries) {
    const type = e.type ?? 'file';
    const mode = e.mode ?? (type === 'directory' ? 0o755 : 0o644);
    const header = { name: e.name, type, mode, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: new Date(0), linkname: e.linkname, devmajor: e.devmajor, devminor: e.devminor };
    await new Promise<void>((resolve, reject) => {
      const body = type === 'file' ? Buffer.from(e.body ?? '') : undefined;
      pack.entry(body ? { ...header, size: body.length } : header, body ?? Buffer.alloc(0), (err) => (err ? reject(err) : resolve()));
    });
  }
  pack.finalize();
  return done;
}

export interface Layer {
  bytes: Buffer;
  /** Digest of `bytes` (the blob digest). */
  digest: string;
  /** Digest of the uncompressed tar. */
  diffId: string;
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A layer blob from entries: gzip by default, plain tar with `gzip: false`. */
export async function layerOf(entries: TarEntry[], opts: { gzip?: boolean } = {}): Promise<Layer> {
  const plain = await tarOf(entries);
  const bytes = opts.gzip === false ? plain : gzipSync(plain);
  return { bytes, digest: sha256(bytes), diffId: sha256(plain) };
}

export interface HostileCase {
  title: string;
  entries: TarEntry[];
  /** The entry the unpacker must name when it refuses the layer. */
  offending: string;
}

/**
 * Layers that try to write outside the directory they are unpacked into. `canary` is an
 * absolute directory holding a file `secret`, next to (not inside) the unpack target;
 * `absolute` is an absolute path that must not come to exist.
 */
export function hostileCases(canary: string, absolute: string): HostileCase[] {
  const ok: TarEntry = { name: 'etc/ok', body: 'harmless\n' };
  return [
    { title: 'a ".." name', entries: [ok, { name: '../escape', body: 'out\n' }], offending: '../escape' },
    { title: 'a ".." in the middle', entries: [ok, { name: 'etc/../../escape2', body: 'out\n' }], offending: 'etc/../../escape2' },
    { title: 'an absolute name', entries: [ok, { name: `${absolute}/path`, body: 'out\n' }], offending: `${absolute}/path` },
    {
      title: 'a write through an absolute symlink',
      entries: [ok, { name: 'a', type: 'symlink', linkname: canary }, { name: 'a/pwned', body: 'out\n' }],
      offending: 'a/pwned',
    },
    {
      title: 'a write through a relative symlink that climbs out',
      entries: [ok, { name: 'a', type: 'symlink', linkname: '../../..' }, { name: 'a/x', body: 'out\n' }],
      offending: 'a/x',
    },
    {
      title: 'a directory through a symlink',
      entries: [{ name: 'd', type: 'symlink', linkname: canary }, { name: 'd/sub/', type: 'directory' }],
      offending: 'd/sub/',
    },
    { title: 'a hard link to ../../etc/passwd', entries: [ok, { name: 'passwd', type: 'link', linkname: '../../etc/passwd' }], offending: 'passwd' },
    { title: 'a hard link to an absolute path', entries: [ok, { name: 'secret', type: 'link', linkname: `${canary}/secret` }], offending: 'secret' },
    {
      title: 'a hard link through a symlink',
      entries: [ok, { name: 's', type: 'symlink', linkname: canary }, { name: 'stolen', type: 'link', linkname: 's/secret' }],
      offending: 'stolen',
    },
    { title: 'a whiteout of ".."', entries: [ok, { name: 'etc/.wh...', body: '' }], offending: 'etc/.wh...' },
    {
      title: 'a whiteout through a symlink',
      entries: [ok, { name: 's', type: 'symlink', linkname: canary }, { name: 's/.wh.secret', body: '' }],
      offending: 's/.wh.secret',
    },
  ];
}
