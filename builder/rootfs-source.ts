/*
 * COPY --from=<stage|image> sources: paths inside a mounted root filesystem. Symlinks on the
 * way resolve inside that root (as `/` of the image), owners and modes are kept as they are.
 */
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { secureJoin } from '../runner/index.js';
import { normalizeSource, SourceError, type EntryType, type ResolvedSource, type SourceEntry } from './context.js';
import { hasGlob, componentRegExp } from './glob.js';
import { ignoreMatcher } from './ignore.js';

export async function resolveInRootfs(root: string, spec: string, exclude: string[], what: string): Promise<ResolvedSource[]> {
  const rel = normalizeSource(spec.replace(/^\/+/, ''));
  const paths = hasGlob(rel) ? await globIn(root, rel) : [rel];
  if (paths.length === 0) throw new SourceError(`no source files were specified: nothing in ${what} matches ${spec}`);
  const skip = ignoreMatcher(exclude);
  const out: ResolvedSource[] = [];
  for (const p of paths) {
    const abs = await secureJoin(root, p);
    const top = await stat(abs, '');
    if (!top) throw new SourceError(`file not found in ${what}: ${spec}`);
    const entries = top.type === 'dir' ? [top, ...(await walk(abs, ''))] : [top];
    out.push({ spec, name: posix.basename(p) || '.', isDir: top.type === 'dir', entries: entries.filter((e) => e.rel === '' || !skip(e.rel)) });
  }
  return out;
}

async function stat(abs: string, rel: string): Promise<SourceEntry | undefined> {
  const st = await lstat(abs).catch(() => undefined);
  if (!st) return undefined;
  const type: EntryType = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
  const e: SourceEntry = { rel, abs, type, mode: st.mode & 0o7777, size: type === 'file' ? st.size : 0, mtimeMs: st.mtimeMs, uid: st.uid, gid: st.gid };
  if (type === 'symlink') e.link = await readlink(abs);
  return e;
}

async function walk(dir: string, rel: string): Promise<SourceEntry[]> {
  const out: SourceEntry[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const childRel = rel ? `${rel}/${name}` : name;
    const e = await stat(join(dir, name), childRel);
    if (!e) continue;
    out.push(e);
    if (e.type === 'dir') out.push(...(await walk(e.abs, childRel)));
  }
  return out;
}

/** Paths under `root` matching `pattern` component by component (directories read, not followed). */
async function globIn(root: string, pattern: string): Promise<string[]> {
  let current = [''];
  for (const part of pattern.split('/')) {
    const next: string[] = [];
    for (const base of current) {
      if (!hasGlob(part)) {
        next.push(base ? `${base}/${part}` : part);
        continue;
      }
      const names = await readdir(await secureJoin(root, base)).catch(() => [] as string[]);
      for (const n of names.sort()) if (componentRegExp(part).test(n)) next.push(base ? `${base}/${n}` : n);
    }
    current = next;
  }
  const existing = await Promise.all(current.map(async (p) => ((await lstat(await secureJoin(root, p)).catch(() => null)) ? p : null)));
  return existing.filter((p): p is string => p !== null);
}
