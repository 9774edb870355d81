/*
 * COPY and ADD into a mounted rootfs (an overlay of the parent layers: what is written lands in
 * the upper dir, the new layer). The destination resolves inside the rootfs, following its
 * symlinks as the image would (`/lib -> usr/lib`), so a COPY never shadows a parent's link.
 *   - a directory source copies its contents; a file goes to DEST, or into DEST/ when DEST ends
 *     in `/`, already is a directory, or there are several sources;
 *   - from the context, owners are 0:0; from a stage or image they are kept; --chown and
 *     --chmod override (created parent directories get --chown too, as BuildKit does);
 *   - ADD extracts local tar archives (plain, gzip, bzip2, xz) and fetches URLs (mode 0600).
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, lchown, lstat, lutimes, mkdir, open, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { secureJoin, unpackLayer } from '../runner/index.js';
import { SourceError, type ResolvedSource, type SourceEntry } from './context.js';
import type { InlineFile } from './dockerfile/instructions.js';
import type { FetchedUrl } from './fetch.js';
import { resolveInRootfs } from './rootfs-source.js';

export interface CopyRequest {
  rootfs: string;
  kind: 'COPY' | 'ADD';
  dest: string;
  workdir: string;
  sources: ResolvedSource[];
  inline: InlineFile[];
  urls: FetchedUrl[];
  /** Sources come from the build context (owners become 0:0, ADD extracts archives). */
  fromContext: boolean;
  owner?: { uid: number; gid: number };
  chmod?: number;
  /** Scratch space for archive extraction. */
  scratch: string;
}

interface Owner {
  uid: number;
  gid: number;
}

export async function copyInto(r: CopyRequest): Promise<void> {
  const destAbs = posix.resolve(r.workdir || '/', r.dest);
  const items = r.sources.length + r.inline.length + r.urls.length;
  const slash = /\/\.?$/.test(r.dest);
  if (items > 1 && !slash) throw new SourceError(`when copying more than one source, the destination must be a directory and end with a /: ${r.dest}`);
  const existing = await lstat(await secureJoin(r.rootfs, destAbs)).catch(() => null);
  const intoDir = slash || items > 1 || !!existing?.isDirectory();
  const created: Owner = r.owner ?? { uid: 0, gid: 0 };
  for (const src of r.sources) {
    if (src.isDir) await copyTree(r, src.entries, destAbs, created);
    else if (r.kind === 'ADD' && r.fromContext && (await archiveKind(src.entries[0]!.abs))) await extract(r, src.entries[0]!.abs, destAbs, created);
    else await copyTree(r, src.entries, intoDir ? posix.join(destAbs, src.name) : destAbs, created);
  }
  for (const f of r.inline) {
    const target = intoDir ? posix.join(destAbs, f.name) : destAbs;
    const path = await prepareTarget(r.rootfs, target, created, false);
    await writeFile(path, f.content);
    await setMeta(path, r.chmod ?? 0o644, created, Date.now(), false);
  }
  for (const u of r.urls) {
    if (intoDir && !u.name) throw new SourceError(`cannot determine a file name from ${u.url}; give the destination a file name`);
    const path = await prepareTarget(r.rootfs, intoDir ? posix.join(destAbs, u.name) : destAbs, created, false);
    await copyFile(u.path, path);
    await setMeta(path, r.chmod ?? 0o600, created, u.mtimeMs ?? Date.now(), false);
  }
}

/** Copies a source's entries (rel '' is the source itself) to `target`. */
async function copyTree(r: CopyRequest, entries: SourceEntry[], target: string, created: Owner): Promise<void> {
  const dirs: [string, SourceEntry][] = [];
  for (const e of entries) {
    const dest = e.rel === '' ? target : posix.join(target, e.rel);
    const owner = r.owner ?? (r.fromContext ? { uid: 0, gid: 0 } : { uid: e.uid, gid: e.gid });
    const mode = r.chmod ?? e.mode;
    if (e.type === 'dir' && e.rel === '') {
      await ensureDir(r.rootfs, dest, created); // a directory source: its contents go into DEST
    } else if (e.type === 'dir') {
      const path = await prepareTarget(r.rootfs, dest, created, true);
      await setMeta(path, mode, owner, undefined, false);
      dirs.push([path, e]);
    } else if (e.type === 'file') {
      const path = await prepareTarget(r.rootfs, dest, created, false);
      await copyFile(e.abs, path);
      await setMeta(path, mode, owner, e.mtimeMs, false);
    } else if (e.type === 'symlink') {
      const path = await prepareTarget(r.rootfs, dest, created, false);
      await symlink(e.link!, path);
      await setMeta(path, 0, owner, e.mtimeMs, true);
    }
  }
  // Directory times last, once nothing more is written into them.
  for (const [path, e] of dirs.reverse()) await lutimes(path, e.mtimeMs / 1000, e.mtimeMs / 1000);
}

/**
 * The host path for `target` inside the rootfs: parents resolved (symlinks followed inside
 * the root) and created when missing; whatever file sits at the target itself is replaced,
 * a directory is kept when a directory is wanted.
 */
async function prepareTarget(rootfs: string, target: string, owner: Owner, dir: boolean): Promise<string> {
  const parent = await ensureDir(rootfs, posix.dirname(target), owner);
  const path = join(parent, posix.basename(target));
  const st = await lstat(path).catch(() => null);
  if (st?.isDirectory()) {
    if (dir) return path;
    throw new SourceError(`cannot copy a file over the directory ${target}`);
  }
  if (st) await unlink(path);
  if (dir) await mkdir(path);
  return path;
}

async function ensureDir(rootfs: string, dir: string, owner: Owner): Promise<string> {
  let current = '/';
  for (const part of dir.split('/').filter(Boolean)) {
    current = posix.join(current, part);
    const path = await secureJoin(rootfs, current);
    const st = await lstat(path).catch(() => null);
    if (!st) {
      await mkdir(path, { mode: 0o755 });
      await chmod(path, 0o755);
      await lchown(path, owner.uid, owner.gid);
    } else if (!st.isDirectory()) throw new SourceError(`cannot create ${dir}: ${current} is not a directory`);
  }
  return secureJoin(rootfs, dir);
}

async function setMeta(path: string, mode: number, owner: Owner, mtimeMs: number | undefined, link: boolean): Promise<void> {
  await lchown(path, owner.uid, owner.gid);
  if (!link) await chmod(path, mode); // after chown, which clears setuid bits
  if (mtimeMs !== undefined) await lutimes(path, mtimeMs / 1000, mtimeMs / 1000);
}

type Archive = 'tar' | 'gzip' | 'bzip2' | 'xz';

async function archiveKind(path: string): Promise<Archive | undefined> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(262);
    const { bytesRead } = await fh.read(buf, 0, 262, 0);
    if (bytesRead >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) return 'gzip';
    if (bytesRead >= 3 && buf.toString('latin1', 0, 3) === 'BZh') return 'bzip2';
    if (bytesRead >= 6 && buf.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
    if (bytesRead >= 262 && buf.toString('latin1', 257, 262) === 'ustar') return 'tar';
    return undefined;
  } finally {
    await fh.close();
  }
}

/** ADD of a local archive: unpacked (safely: nothing may escape) and merged into `dest`. */
async function extract(r: CopyRequest, archive: string, dest: string, created: Owner): Promise<void> {
  const kind = (await archiveKind(archive))!;
  const dir = join(r.scratch, `extract-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  try {
    await unpackLayer(await decompressed(archive, kind), dir, posix.basename(archive));
    const entries = await resolveInRootfs(dir, '/', [], 'the archive');
    const tree = entries[0]!.entries.filter((e) => e.rel !== '');
    await ensureDir(r.rootfs, dest, created);
    await copyTree({ ...r, fromContext: false }, tree, dest, created);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** gzip and plain tar go to the unpacker as they are; bzip2 and xz through their tools. */
async function decompressed(path: string, kind: Archive): Promise<Readable> {
  if (kind === 'tar' || kind === 'gzip') return createReadStream(path);
  const tool = kind === 'xz' ? 'xz' : 'bzip2';
  const child = spawn(tool, ['-dc', path], { stdio: ['ignore', 'pipe', 'ignore'] });
  child.on('error', (err) => child.stdout.destroy(new Error(`${tool} is needed to extract ${posix.basename(path)}: ${err.message}`)));
  return child.stdout;
}
