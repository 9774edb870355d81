/*
 * The build context as COPY/ADD see it: the files under contextDir minus .dockerignore, listed
 * once (lstat only: nothing is followed while walking). Sources are resolved against that
 * listing: globs match entries, symlinks on the way are followed only while they stay inside
 * the context (a link to an absolute path, or one whose `..` climbs out, is refused), so no
 * byte from outside the context can reach an image.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { posix, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { hasGlob, matchPath } from './glob.js';
import { ignoreMatcher, type IgnoreTest } from './ignore.js';

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

export interface SourceEntry {
  /** Path relative to the source it belongs to ('' for the source itself). */
  rel: string;
  abs: string;
  type: EntryType;
  mode: number;
  size: number;
  mtimeMs: number;
  uid: number;
  gid: number;
  link?: string;
}

/** One COPY source, resolved: the entry itself first, then (for a directory) all below it, sorted. */
export interface ResolvedSource {
  spec: string;
  name: string;
  isDir: boolean;
  entries: SourceEntry[];
}

/** A source that cannot be used; the caller names the instruction and line. */
export class SourceError extends Error {}

interface Listed {
  path: string;
  type: EntryType;
  mode: number;
  size: number;
  mtimeMs: number;
  link?: string;
}

export class BuildContext {
  private listed?: Promise<Map<string, Listed>>;
  private readonly ignored: IgnoreTest;
  private readonly hasExceptions: boolean;

  constructor(
    readonly root: string,
    ignorePatterns: string[],
  ) {
    this.ignored = ignoreMatcher(ignorePatterns);
    this.hasExceptions = ignorePatterns.some((p) => p.trim().startsWith('!'));
  }

  /** Every included path (relative, '' for the root) → its lstat facts. */
  listing(): Promise<Map<string, Listed>> {
    this.listed ??= this.walk();
    return this.listed;
  }

  /** Resolves one source spec (glob or path) to the sources it names, minus `exclude` matches. */
  async resolve(spec: string, exclude: string[] = []): Promise<ResolvedSource[]> {
    const rel = normalizeSource(spec);
    const list = await this.listing();
    const globbed = hasGlob(rel);
    const roots = globbed ? [...list.keys()].filter((p) => p !== '' && matchPath(rel, p)).sort() : [await this.follow(rel, spec)];
    if (roots.length === 0) throw new SourceError(`no source files were specified: nothing in the build context matches ${spec}`);
    const skip = ignoreMatcher(exclude);
    return roots.map((root) => {
      const top = list.get(root)!;
      const isDir = top.type === 'dir';
      const below = isDir ? [...list.keys()].filter((p) => root === '' ? p !== '' : p.startsWith(`${root}/`)).sort() : [];
      const entries = [root, ...below]
        .map((p) => this.entry(list.get(p)!, root === '' ? p : p === root ? '' : p.slice(root.length + 1)))
        .filter((e) => e.rel === '' || !(skip(e.rel) || skip(posix.join(root, e.rel))));
      // A followed symlink keeps the name it was copied by.
      return { spec, name: posix.basename(globbed ? root : rel) || '.', isDir, entries };
    });
  }

  /** The path with every symlink on the way resolved, refusing any that leaves the context. */
  private async follow(rel: string, spec: string): Promise<string> {
    const list = await this.listing();
    return followInside(rel, spec, async (path) => list.get(path) ?? new SourceError(await this.missing(spec, path)));
  }

  private async missing(spec: string, at: string): Promise<string> {
    const onDisk = await lstat(join(this.root, at)).then(() => true, () => false);
    return onDisk ? `file excluded by .dockerignore: ${spec}` : `file not found in build context: ${spec}`;
  }

  private entry(l: Listed, rel: string): SourceEntry {
    return { rel, abs: join(this.root, l.path), type: l.type, mode: l.mode, size: l.size, mtimeMs: l.mtimeMs, uid: 0, gid: 0, ...(l.link !== undefined ? { link: l.link } : {}) };
  }

  private async walk(): Promise<Map<string, Listed>> {
    const out = new Map<string, Listed>();
    const visit = async (rel: string): Promise<boolean> => {
      const abs = join(this.root, rel);
      const st = await lstat(abs);
      const type: EntryType = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
      const ignored = this.ignored(rel);
      if (ignored && (type !== 'dir' || !this.hasExceptions)) return false;
      const item: Listed = { path: rel, type, mode: st.mode & 0o7777, size: type === 'file' ? st.size : 0, mtimeMs: st.mtimeMs };
      if (type === 'symlink') item.link = await readlink(abs);
      let kept = !ignored;
      if (type === 'dir') {
        const names = (await readdir(abs)).sort();
        const children = await Promise.all(names.map((n) => visit(rel ? `${rel}/${n}` : n)));
        kept ||= children.some(Boolean);
      }
      if (kept) out.set(rel, item);
      return kept;
    };
    await visit('');
    return out;
  }
}

type LinkLookup = (path: string) => Promise<{ type: EntryType; link?: string } | SourceError>;

/**
 * `rel` with every symlink on the way resolved against the context (as COPY sees it), through
 * `lookup` (the listing, or the disk). A link to an absolute path, or one whose `..` climbs
 * out, is refused, so nothing outside the context is ever read.
 */
async function followInside(rel: string, spec: string, lookup: LinkLookup): Promise<string> {
  const pending = rel === '' ? [] : rel.split('/');
  let current = '';
  for (let hops = 0; pending.length; ) {
    const next = posix.join(current || '.', pending.shift()!).replace(/^\.$/, '');
    const e = await lookup(next);
    if (e instanceof SourceError) throw e;
    if (e.type !== 'symlink') {
      current = next;
      continue;
    }
    if (++hops > 40) throw new SourceError(`${spec}: too many levels of symbolic links`);
    const target = e.link!;
    const joined = posix.normalize(posix.join(posix.dirname(next), target));
    if (target.startsWith('/') || joined === '..' || joined.startsWith('../')) {
      throw new SourceError(`${spec}: ${next} is a symlink to ${target}, which is outside the build context; refusing to follow it`);
    }
    pending.unshift(...joined.split('/').filter((p) => p !== '.' && p !== ''));
    current = '';
  }
  return current;
}

/**
 * The Dockerfile (or another file the build reads itself) inside the context: resolved like a
 * COPY source, whatever .dockerignore says, and only a regular file. Returns its host path.
 */
export async function contextFile(root: string, spec: string): Promise<string> {
  const rel = await followInside(normalizeSource(spec), spec, async (path) => {
    const st = await lstat(join(root, path)).catch(() => undefined);
    if (!st) return new SourceError(`${spec} is not in the build context`);
    return st.isSymbolicLink() ? { type: 'symlink', link: await readlink(join(root, path)) } : { type: st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other' };
  });
  const st = await lstat(join(root, rel));
  if (!st.isFile()) throw new SourceError(`${spec} is not a regular file in the build context`);
  return join(root, rel);
}

/** A source as written → a clean path relative to the context root ('' for the root). */
export function normalizeSource(spec: string): string {
  const norm = posix.normalize(spec.replace(/\/+$/, '') || '.');
  if (norm === '..' || norm.startsWith('../')) throw new SourceError(`forbidden path outside the build context: ${spec}`);
  return posix.normalize(`/${norm}`).slice(1).replace(/^\.$/, '');
}

/**
 * A digest of what a set of sources would copy: names, types, permission bits, sizes, link
 * targets and file contents (not times or owners). `files` maps each file to its sha256.
 */
export async function digestSources(sources: ResolvedSource[]): Promise<{ digest: string; files: Record<string, string> }> {
  const files: Record<string, string> = {};
  const all = sources.flatMap((s, i) => s.entries.map((e) => ({ s, i, e })));
  const hashes = await mapLimit(all, 8, ({ e }) => (e.type === 'file' ? fileSha256(e.abs) : Promise.resolve('')));
  const h = createHash('sha256');
  all.forEach(({ s, i, e }, k) => {
    const name = posix.join(s.spec, e.rel);
    if (e.type === 'file') files[name] = hashes[k]!;
    h.update(JSON.stringify([i, s.name, s.isDir, e.rel, e.type, e.mode, e.size, e.link ?? '', hashes[k]]));
    h.update('\n');
  });
  return { digest: `sha256:${h.digest('hex')}`, files };
}

export async function fileSha256(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), async (source: AsyncIterable<Buffer>) => {
    for await (const chunk of source) h.update(chunk);
  });
  return h.digest('hex');
}

export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
