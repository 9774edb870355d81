/*
 * Unpacks one layer tar (gzip or plain, told apart by magic bytes) into its own directory,
 * keeping modes (setuid included), owners, mtimes, hard links, symlinks, device nodes and
 * xattrs, and turning OCI whiteouts into overlayfs ones (see overlay.ts).
 *
 * Safety: every path is checked component by component before anything is created. An
 * entry is refused (and the whole directory removed) when its name is absolute or has a
 * `..` component, when any parent on its way is a symlink (`a -> /etc`, then `a/passwd`)
 * or a file, or when it is a hard link to a target outside the layer or through a symlink.
 * Symlinks themselves may point anywhere: they are resolved inside the container's root at
 * run time, and nothing here follows one (mkdir and O_EXCL|O_NOFOLLOW opens do not follow
 * a last component; parents are known to be real directories).
 *
 * Small files are written in the background (a window of WINDOW) while the next entries are
 * read: a layer of tens of thousands of files is bound by syscalls, not by one at a time.
 */
import { createHash } from 'node:crypto';
import { close, constants, fchmod, fchown, futimes, open, write } from 'node:fs';
import { chmod, link, lchown, lutimes, mkdir, rm, symlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar, { type Extract, type Header } from 'tar-stream';
import { OPAQUE_XATTR, makeNode, makeWhiteout, setXattr } from './overlay.js';

export class UnsafeLayerError extends Error {
  constructor(
    readonly layer: string,
    readonly entry: string,
    reason: string,
  ) {
    super(`layer ${layer}: entry "${entry}" ${reason}; the layer was refused and nothing of it was kept`);
    this.name = 'UnsafeLayerError';
  }
}

export interface UnpackResult {
  /** sha256 of the uncompressed tar: the layer's diff_id. */
  diffId: string;
  entries: number;
}

/** A tar entry's contents (a streamx Readable: iterate it, or resume it to skip). */
type EntryBody = AsyncIterable<unknown> & { resume(): unknown };

const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';
const FILE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const isRoot = process.getuid?.() === 0;
// fd-based calls: cheaper than FileHandle objects at tens of thousands of files per layer.
const fsOpen = promisify(open);
const fsWrite = promisify(write) as (fd: number, buf: Buffer, offset: number, length: number) => Promise<{ bytesWritten: number }>;
const fsFchown = promisify(fchown);
const fsFchmod = promisify(fchmod);
const fsFutimes = promisify(futimes);
const fsClose = promisify(close);

/**
 * Streams `input` (the layer blob's bytes) into `dest`, which must not exist yet.
 * `layer` names the layer in errors. On any failure `dest` is removed.
 */
export async function unpackLayer(input: Readable, dest: string, layer: string): Promise<UnpackResult> {
  await mkdir(dest);
  const unpacker = new Unpacker(dest, layer);
  const diff = createHash('sha256');
  const extract = tar.extract();
  const rawXattrs = captureRawXattrs(extract);
  const feeding = pipeline(input, (source: AsyncIterable<Buffer>) => decompressed(source, layer), hashing(diff), extract);
  feeding.catch(() => undefined);
  try {
    for await (const entry of extract) await unpacker.entry(entry.header, entry, rawXattrs());
    await feeding;
    await unpacker.finish();
    return { diffId: `sha256:${diff.digest('hex')}`, entries: unpacker.count };
  } catch (err) {
    input.destroy();
    await unpacker.settle().catch(() => undefined);
    await rm(dest, { recursive: true, force: true });
    throw err;
  } finally {
    await unpacker.cleanup();
  }
}

/** What an unpacked path is; the layer directory starts empty, so this map is the whole truth. */
type Kind = 'dir' | 'symlink' | 'other';

/**
 * Files up to this size are read into memory and written in the background while the next
 * entries are read; larger ones are streamed to disk before going on.
 */
const SMALL_FILE = 256 << 10;
/** Background writes in flight at once (libuv's threads do the syscalls). */
const WINDOW = 64;

class Unpacker {
  count = 0;
  /**
   * Every path this unpack made, by kind. Parents are checked against it rather than with
   * lstat: nothing but this unpacker writes into the fresh directory, so a path absent here
   * is absent on disk, and a symlink is known as one before anything could go through it.
   */
  private readonly kinds = new Map<string, Kind>([['', 'dir']]);
  private readonly inflight = new Set<Promise<void>>();
  private readonly byPath = new Map<string, Promise<void>>();
  private failure: unknown;
  private readonly dirTimes = new Map<string, [string, Date]>();
  private whiteoutTemplate?: string;

  constructor(
    private readonly root: string,
    private readonly layer: string,
  ) {}

  async entry(header: Header, body: EntryBody, rawXattrs?: Map<string, Buffer>): Promise<void> {
    if (this.failure) throw this.failure;
    this.count++;
    const parts = this.components(header.name, header.name);
    const base = parts[parts.length - 1];
    const isFile = header.type === 'file' || header.type === 'contiguous-file';
    if (!isFile || base === undefined || base.startsWith(WHITEOUT)) body.resume();
    if (base === undefined) return; // the layer root itself
    const parent = await this.parentDir(parts, header.name);
    const rel = parts.join('/');
    const path = join(parent, base);
    const xattrs = rawXattrs ?? xattrsOf(header);
    if (base === OPAQUE) return this.later(rel, () => setXattr(parent, OPAQUE_XATTR, Buffer.from('y')));
    if (base.startsWith(WHITEOUT + WHITEOUT)) return; // other aufs metadata: meaningless here
    if (base.startsWith(WHITEOUT)) {
      const hidden = base.slice(WHITEOUT.length);
      if (hidden === '' || hidden === '.' || hidden === '..') throw new UnsafeLayerError(this.layer, header.name, `is a whiteout of "${hidden}", which names no file`);
      return this.whiteout(join(parent, hidden), [...parts.slice(0, -1), hidden].join('/'));
    }
    if (header.type === 'directory') {
      if (!(await this.clear(path, rel, true))) await mkdir(path, { mode: 0o700 });
      this.kinds.set(rel, 'dir');
      this.dirTimes.set(rel, [path, header.mtime]);
      return this.later(rel, () => this.metadata(path, header, xattrs, 'dir'));
    }
    await this.clear(path, rel, false);
    this.kinds.set(rel, header.type === 'symlink' ? 'symlink' : 'other');
    switch (header.type) {
      case 'file':
      case 'contiguous-file':
        return this.file(path, rel, header, body, xattrs);
      case 'symlink':
        return this.later(rel, async () => {
          await symlink(header.linkname, path);
          await this.metadata(path, header, xattrs, 'symlink');
        });
      case 'link': {
        const [target, targetRel] = this.linkTarget(header);
        this.kinds.set(rel, this.kinds.get(targetRel)!); // a hard link to a symlink is a symlink
        const written = this.byPath.get(targetRel);
        return this.later(rel, async () => {
          await written;
          await link(target, path);
        });
      }
      case 'character-device':
      case 'block-device':
      case 'fifo':
        if (!isRoot) return; // only root may make device nodes; docker skips them rootless too
        return this.later(rel, async () => {
          await makeNode(path, header.type === 'fifo' ? 'p' : header.type === 'block-device' ? 'b' : 'c', header.devmajor, header.devminor);
          await this.metadata(path, header, xattrs, 'other');
        });
      default:
        throw new UnsafeLayerError(this.layer, header.name, `has tar type "${String(header.type)}", which a layer may not contain`);
    }
  }

  /** Waits for the background writes, then sets directory mtimes (deepest first). */
  async finish(): Promise<void> {
    await this.settle();
    const dirs = [...this.dirTimes.values()].sort((a, b) => b[0].length - a[0].length);
    for (const [path, mtime] of dirs) await lutimes(path, mtime, mtime);
  }

  /** Waits for every background write; rejects with the first that failed. */
  async settle(): Promise<void> {
    while (this.inflight.size) await Promise.all(this.inflight);
    if (this.failure) throw this.failure;
  }

  async cleanup(): Promise<void> {
    await this.settle().catch(() => undefined);
    if (this.whiteoutTemplate) await rm(this.whiteoutTemplate, { force: true });
  }

  /** Runs `work` in the background, keeping at most WINDOW at once. */
  private async later(rel: string, work: () => Promise<void>): Promise<void> {
    while (this.inflight.size >= WINDOW) await Promise.race(this.inflight);
    const task: Promise<void> = work().then(
      () => undefined,
      (err: unknown) => void (this.failure ??= err),
    );
    this.inflight.add(task);
    this.byPath.set(rel, task);
    void task.then(() => {
      this.inflight.delete(task);
      if (this.byPath.get(rel) === task) this.byPath.delete(rel);
    });
  }

  private async file(path: string, rel: string, header: Header, body: EntryBody, xattrs: Map<string, Buffer>): Promise<void> {
    if (header.size > SMALL_FILE) {
      const fd = await fsOpen(path, FILE_FLAGS, 0o600);
      try {
        for await (const chunk of body) await writeAll(fd, chunk as Buffer);
      } catch (err) {
        await fsClose(fd);
        throw err;
      }
      return this.later(rel, () => this.finishFile(fd, path, header, xattrs));
    }
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return this.later(rel, async () => this.finishFile(await fsOpen(path, FILE_FLAGS, 0o600), path, header, xattrs, Buffer.concat(chunks)));
  }

  /** Owner, then mode (chown clears setuid), times, close; then xattrs (chown clears capabilities). */
  private async finishFile(fd: number, path: string, header: Header, xattrs: Map<string, Buffer>, data?: Buffer): Promise<void> {
    try {
      if (data?.length) await writeAll(fd, data);
      if (isRoot) await fsFchown(fd, header.uid, header.gid);
      await fsFchmod(fd, header.mode & 0o7777);
      await fsFutimes(fd, header.mtime, header.mtime);
    } finally {
      await fsClose(fd);
    }
    await this.xattrs(path, header, xattrs);
  }

  private async metadata(path: string, header: Header, xattrs: Map<string, Buffer>, kind: Kind): Promise<void> {
    if (isRoot) await lchown(path, header.uid, header.gid);
    if (kind !== 'symlink') await chmod(path, header.mode & 0o7777);
    await this.xattrs(path, header, xattrs);
    if (kind !== 'dir') await lutimes(path, header.mtime, header.mtime);
  }

  private async xattrs(path: string, header: Header, xattrs: Map<string, Buffer>): Promise<void> {
    for (const [name, value] of xattrs) {
      // overlay's own xattrs come only from whiteout entries, never from a tar.
      if (name.startsWith('trusted.overlay.')) continue;
      await setXattr(path, name, value).catch((err: Error & { stderr?: string }) => {
        if (!/not supported/i.test(err.stderr ?? '')) throw new Error(`layer ${this.layer}: entry "${header.name}": ${err.message}`);
      });
    }
  }

  /** An entry name as path components; `.` dropped, `..` and absolute names refused. */
  private components(name: string, entry: string, what = 'has'): string[] {
    if (name.startsWith('/')) throw new UnsafeLayerError(this.layer, entry, `${what} an absolute path ("${name}")`);
    const parts = name.split('/').filter((p) => p !== '' && p !== '.');
    if (parts.includes('..')) throw new UnsafeLayerError(this.layer, entry, `${what} a ".." component ("${name}"), which could reach outside the layer`);
    return parts;
  }

  /** Makes (or, with `create` false, only checks) every parent of `parts` as a real directory. */
  private async parentDir(parts: string[], entry: string, create = true): Promise<string> {
    for (let i = 0; i < parts.length - 1; i++) {
      const rel = parts.slice(0, i + 1).join('/');
      const kind = this.kinds.get(rel);
      if (kind === 'dir') continue;
      if (kind === 'symlink') throw new UnsafeLayerError(this.layer, entry, `would be written through symlink "${rel}"`);
      if (kind === 'other') throw new UnsafeLayerError(this.layer, entry, `needs "${rel}" to be a directory, but the layer made it a file`);
      if (!create) throw new UnsafeLayerError(this.layer, entry, `refers to "${parts.join('/')}", which does not exist in the layer`);
      await mkdir(join(this.root, rel), { mode: 0o755 });
      this.kinds.set(rel, 'dir');
    }
    return join(this.root, ...parts.slice(0, -1));
  }

  /** Removes whatever is at `path` unless both are directories (which merge). */
  private async clear(path: string, rel: string, keepDir: boolean): Promise<boolean> {
    const kind = this.kinds.get(rel);
    if (kind === undefined) return false;
    if (keepDir && kind === 'dir') return true;
    await this.settle(); // nothing may still be writing under what goes
    await rm(path, { recursive: true, force: true });
    const gone = (k: string) => k === rel || k.startsWith(`${rel}/`);
    for (const k of this.kinds.keys()) if (gone(k)) this.kinds.delete(k);
    for (const k of this.dirTimes.keys()) if (gone(k)) this.dirTimes.delete(k);
    return false;
  }

  /** A hard link's target: inside the layer, reached through real directories, not a directory. */
  private linkTarget(header: Header): [string, string] {
    const parts = this.components(header.linkname, header.name, 'is a hard link to');
    for (let i = 0; i < parts.length - 1; i++) {
      const rel = parts.slice(0, i + 1).join('/');
      const kind = this.kinds.get(rel);
      if (kind === 'symlink') throw new UnsafeLayerError(this.layer, header.name, `is a hard link through symlink "${rel}"`);
      if (kind !== 'dir') throw new UnsafeLayerError(this.layer, header.name, `is a hard link to "${header.linkname}", but "${rel}" is not a directory in the layer`);
    }
    const rel = parts.join('/');
    const kind = this.kinds.get(rel);
    if (kind === undefined) throw new UnsafeLayerError(this.layer, header.name, `is a hard link to "${header.linkname}", which is not (yet) in the layer`);
    if (kind === 'dir') throw new UnsafeLayerError(this.layer, header.name, `is a hard link to directory "${header.linkname}"`);
    return [join(this.root, ...parts), rel];
  }

  /** All whiteouts of a layer are hard links to one 0/0 device: one mknod per layer. */
  private async whiteout(path: string, rel: string): Promise<void> {
    await this.clear(path, rel, false);
    if (!this.whiteoutTemplate) {
      this.whiteoutTemplate = `${this.root}.whiteout`;
      await rm(this.whiteoutTemplate, { force: true });
      await makeWhiteout(this.whiteoutTemplate);
    }
    this.kinds.set(rel, 'other');
    const template = this.whiteoutTemplate;
    return this.later(rel, () =>
      link(template, path).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EMLINK') throw err;
        await makeWhiteout(path);
      }),
    );
  }
}

async function writeAll(fd: number, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length; ) at += (await fsWrite(fd, data, at, data.length - at)).bytesWritten;
}

const XATTR_KEY = 'SCHILY.xattr.';

/** xattrs as tar-stream decoded them (UTF-8 strings: binary values may be mangled). */
function xattrsOf(header: Header): Map<string, Buffer> {
  const pax = (header.pax ?? {}) as Record<string, string>;
  return new Map(Object.entries(pax).filter(([k]) => k.startsWith(XATTR_KEY)).map(([k, v]) => [k.slice(XATTR_KEY.length), Buffer.from(v, 'utf8')]));
}

/**
 * tar-stream decodes PAX values as UTF-8, which mangles binary xattrs such as
 * security.capability. This reads the raw PAX records of each entry as tar-stream parses
 * them (hooking its one decode method on this instance only); returns a function that
 * hands out the current entry's xattrs once. Without the hook (a future tar-stream),
 * the decoded strings are used.
 */
function captureRawXattrs(extract: Extract): () => Map<string, Buffer> | undefined {
  type Internals = { _decodeLongHeader?: (buf: Buffer) => void; _header?: { type?: string } };
  const inner = extract as unknown as Internals;
  const original = inner._decodeLongHeader;
  let pending: Map<string, Buffer> | undefined;
  if (typeof original !== 'function') return () => undefined;
  inner._decodeLongHeader = function (this: Internals, buf: Buffer) {
    if (this._header?.type === 'pax-header') pending = paxXattrs(buf);
    original.call(this, buf);
  };
  return () => {
    const taken = pending;
    pending = undefined;
    return taken;
  };
}

function paxXattrs(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (let at = 0; at < buf.length; ) {
    const space = buf.indexOf(0x20, at);
    const len = parseInt(buf.toString('ascii', at, space), 10);
    if (space < 0 || !(len > 0)) break;
    const record = buf.subarray(space + 1, at + len - 1); // without the trailing newline
    const eq = record.indexOf(0x3d);
    const key = record.toString('utf8', 0, eq);
    if (eq > 0 && key.startsWith(XATTR_KEY)) out.set(key.slice(XATTR_KEY.length), Buffer.from(record.subarray(eq + 1)));
    at += len;
  }
  return out;
}

/** The tar stream inside a layer blob: gzip or plain, by magic bytes. */
async function* decompressed(source: AsyncIterable<Buffer>, layer: string): AsyncGenerator<Buffer> {
  const it = source[Symbol.asyncIterator]();
  let head = Buffer.alloc(0);
  while (head.length < 6) {
    const next = await it.next();
    if (next.done) break;
    head = Buffer.concat([head, next.value]);
  }
  const kind = compressionOf(head);
  if (kind !== 'gzip' && kind !== 'tar') throw new Error(`layer ${layer} is ${kind}-compressed; only gzip and uncompressed layers are supported: rebuild or push it with gzip`);
  const rest = (async function* () {
    if (head.length) yield head;
    for (let next = await it.next(); !next.done; next = await it.next()) yield next.value;
  })();
  if (kind === 'tar') return yield* rest;
  const src = Readable.from(rest);
  const gunzip = createGunzip();
  src.on('error', (err) => gunzip.destroy(err));
  try {
    for await (const chunk of src.pipe(gunzip)) yield chunk as Buffer;
  } catch (err) {
    if (!String((err as NodeJS.ErrnoException).code).startsWith('Z_')) throw err;
    throw new Error(`layer ${layer}: gzip stream is corrupt (${(err as Error).message})`);
  } finally {
    src.destroy();
  }
}

function compressionOf(head: Buffer): string {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  if (head.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  return 'tar';
}

function hashing(hash: ReturnType<typeof createHash>): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
  });
}
