/*
 * Sending a build context: the client packs the context directory into a tar
 * stream (minus .dockerignore, as docker does: the Dockerfile and .dockerignore
 * are sent even when ignored), POSTs it to /api/builds, the registry process
 * stores it at /slipway/contexts/<id>.tar in its storage (filesystem or S3), and
 * the worker that takes the job fetches it back from the API and extracts it.
 * Nothing is buffered whole on the way.
 *
 * Extraction refuses entries that would land outside the target: absolute
 * paths, `..`, and paths through a symlink extracted earlier. Symlinks are
 * recreated as they are (the executor refuses to follow one out of the context).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { link, lstat, mkdir, readdir, readlink, realpath, rm, symlink, utimes } from 'node:fs/promises';
import { dirname, isAbsolute, join, posix, relative, resolve, sep } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { writeFromBody, type Store } from '../storage/index.js';
import { ignoreMatcher, loadIgnore } from './ignore.js';
import { BuildError } from './types.js';

/** Name of a Dockerfile given with -f from outside the context, inside the sent tar. */
export const OUTSIDE_DOCKERFILE = '.slipway-dockerfile';

export interface PackStats {
  files: number;
  bytes: number;
}

/**
 * Packs `contextDir` into a tar stream. `dockerfile` is the Dockerfile's path
 * (absolute, or relative to the context); returns its path inside the tar.
 */
export async function packContext(contextDir: string, dockerfile: string): Promise<{ stream: Readable; dockerfile: string; stats: PackStats }> {
  const root = resolve(contextDir);
  const dfAbs = resolve(root, dockerfile);
  const dfRel = relative(root, dfAbs).split(sep).join('/');
  const outside = dfRel.startsWith('../') || isAbsolute(dfRel);
  const inTar = outside ? OUTSIDE_DOCKERFILE : dfRel;
  const ignored = ignoreMatcher(await loadIgnore(root, outside ? 'Dockerfile' : dfRel));
  const always = new Set([inTar, '.dockerignore', `${inTar}.dockerignore`]);
  const stats: PackStats = { files: 0, bytes: 0 };
  const pack = tar.pack();

  const addFile = async (abs: string, name: string) => {
    const st = await lstat(abs);
    const header = { name, mode: st.mode & 0o7777, mtime: st.mtime, uid: 0, gid: 0 };
    if (st.isDirectory()) await entry(pack, { ...header, type: 'directory' });
    else if (st.isSymbolicLink()) await entry(pack, { ...header, type: 'symlink', linkname: await readlink(abs) });
    else if (st.isFile()) {
      stats.files++;
      stats.bytes += st.size;
      await pipeline(createReadStream(abs), pack.entry({ ...header, type: 'file', size: st.size }));
    }
  };
  const walk = async (dir: string, prefix: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const rel = prefix ? `${prefix}/${name}` : name;
      const abs = join(dir, name);
      const skip = ignored(rel) && !always.has(rel);
      const st = await lstat(abs);
      if (!skip) await addFile(abs, rel);
      // An ignored directory may still hold `!`-excepted files, so it is walked anyway.
      if (st.isDirectory()) await walk(abs, rel);
    }
  };
  void (async () => {
    await walk(root, '');
    if (outside) await addFile(dfAbs, OUTSIDE_DOCKERFILE);
    pack.finalize();
  })().catch((err: unknown) => pack.destroy(err as Error));
  // tar-stream's streams are streamx ones; callers get a node Readable.
  return { stream: Readable.from(pack, { objectMode: false }), dockerfile: inTar, stats };
}

function entry(pack: tar.Pack, header: Partial<tar.Header> & { name: string }): Promise<void> {
  return new Promise((ok, fail) => pack.entry(header, (err) => (err ? fail(err) : ok())));
}

/** Extracts a context tar into `dest` (created), refusing entries that escape it. */
export async function extractContext(source: Readable, dest: string): Promise<PackStats> {
  await mkdir(dest, { recursive: true });
  const root = await realpath(dest);
  const stats: PackStats = { files: 0, bytes: 0 };
  const extract = tar.extract();
  const feeding = pipeline(source, extract);
  try {
    for await (const e of extract) {
      const h = e.header;
      const target = await safeTarget(root, h.name);
      if (target === root && h.type === 'directory') {
        e.resume();
        continue;
      }
      await rm(target, { recursive: h.type !== 'directory', force: true }).catch(() => undefined);
      if (h.type === 'directory') await mkdir(target, { recursive: true, mode: h.mode & 0o7777 });
      else if (h.type === 'symlink') await symlink(h.linkname, target);
      else if (h.type === 'link') await link(await safeTarget(root, h.linkname), target);
      else if (h.type === 'file' || h.type === 'contiguous-file') {
        await pipeline(e, createWriteStream(target, { flags: 'wx', mode: h.mode & 0o7777 }));
        await utimes(target, h.mtime, h.mtime);
        stats.files++;
        stats.bytes += h.size;
        continue;
      }
      e.resume();
    }
    await feeding;
  } catch (err) {
    source.destroy();
    await feeding.catch(() => undefined);
    throw err;
  }
  return stats;
}

/** Absolute path for a tar entry name, checked to stay under `root` (parents included, symlinks resolved). */
async function safeTarget(root: string, name: string): Promise<string> {
  const clean = posix.normalize(name.replace(/\/+$/, '') || '.');
  if (posix.isAbsolute(clean) || clean === '..' || clean.startsWith('../')) {
    throw new BuildError(`build context entry ${JSON.stringify(name)} points outside the context`, 'user');
  }
  if (clean === '.') return root;
  const target = join(root, clean);
  await mkdir(dirname(target), { recursive: true });
  const parent = await realpath(dirname(target));
  if (parent !== root && !parent.startsWith(root + sep)) {
    throw new BuildError(`build context entry ${JSON.stringify(name)} goes through a symlink out of the context`, 'user');
  }
  return join(parent, posix.basename(clean));
}

/* ---- contexts in the registry's storage ---- */

export const contextPath = (id: string): string => `/slipway/contexts/${id}.tar`;

export class ContextTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`the build context is larger than the limit of ${limit} bytes; shrink it with .dockerignore or raise the limit`);
  }
}

/** Streams `body` into storage; the digest and size are computed on the way. */
export async function storeContext(store: Store, id: string, body: Readable, limit: number, signal?: AbortSignal): Promise<{ size: number; digest: string }> {
  const hash = createHash('sha256');
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      size += chunk.length;
      if (size > limit) return done(new ContextTooLargeError(limit));
      hash.update(chunk);
      done(null, chunk);
    },
  });
  const writer = await store.driver.writer(contextPath(id));
  try {
    await writeFromBody(body, meter, writer, signal);
  } catch (err) {
    // Drained, not destroyed: an HTTP client still reads the answer (413), not a reset.
    body.resume();
    await writer.cancel().catch(() => undefined);
    throw err;
  }
  return { size, digest: `sha256:${hash.digest('hex')}` };
}

export async function openContext(store: Store, id: string, signal?: AbortSignal): Promise<Readable | null> {
  if (!(await store.driver.stat(contextPath(id)))) return null;
  return store.driver.reader(contextPath(id), { signal });
}

export async function deleteContext(store: Store, id: string): Promise<void> {
  await store.driver.delete(contextPath(id));
}

/**
 * Removes stored contexts older than `maxAgeMs` (builds whose worker never came
 * back to delete theirs); returns how many. Meant for the registry's hourly janitor.
 */
export async function purgeContexts(store: Store, maxAgeMs: number): Promise<number> {
  const cutoff = Date.now() - maxAgeMs;
  let removed = 0;
  for await (const info of store.driver.walk('/slipway/contexts')) {
    if (info.modTime.getTime() < cutoff) {
      await store.driver.delete(info.path);
      removed++;
    }
  }
  return removed;
}
