import type { FileInfo, StorageDriver } from './driver.js';
import { REPOSITORIES, tagCurrentLink } from './paths.js';

/** What one walk of the repositories tree tells GC about a repository. */
export interface RepoState {
  name: string;
  /** digest → the revision link (its modTime: when the manifest was last pushed). */
  revisions: Map<string, FileInfo>;
  /** tag → its current link and the digest it names (read after the walk). */
  tags: Map<string, { link: FileInfo; digest: string | null }>;
  /** subject digest → digests of the manifests that name it as subject. */
  referrers: Map<string, string[]>;
  /** digest → the `_layers` link. */
  layers: Map<string, FileInfo>;
  hasUploads: boolean;
}

const ENTRY = /^(.+?)\/(_manifests|_layers|_uploads)\/(.+)$/;
const REVISION = /^revisions\/([a-z0-9]+)\/([a-f0-9]+)\/link$/;
const TAG = /^tags\/([^/]+)\/current\/link$/;
const REFERRER = /^referrers\/([a-z0-9]+)\/([a-f0-9]+)\/([a-z0-9]+)-([a-f0-9]+)$/;
const LAYER = /^([a-z0-9]+)\/([a-f0-9]+)\/link$/;

function stateOf(repos: Map<string, RepoState>, name: string): RepoState {
  let s = repos.get(name);
  if (!s) {
    s = { name, revisions: new Map(), tags: new Map(), referrers: new Map(), layers: new Map(), hasUploads: false };
    repos.set(name, s);
  }
  return s;
}

/**
 * One walk of /v2/repositories (on S3 a flat listing, 1000 keys a request):
 * revisions, tags, referrers, layer links and upload sessions of every
 * repository. Repository names cannot have a component starting with '_', so
 * the first `/_manifests/`, `/_layers/` or `/_uploads/` ends the name.
 */
export async function scanRepositories(driver: StorageDriver, signal?: AbortSignal): Promise<Map<string, RepoState>> {
  const repos = new Map<string, RepoState>();
  for await (const info of driver.walk(REPOSITORIES)) {
    signal?.throwIfAborted();
    const m = ENTRY.exec(info.path.slice(REPOSITORIES.length + 1));
    if (!m) continue;
    const [, name, kind, rest] = m as unknown as [string, string, string, string];
    const s = stateOf(repos, name);
    if (kind === '_uploads') {
      s.hasUploads = true;
    } else if (kind === '_layers') {
      const l = LAYER.exec(rest);
      if (l) s.layers.set(`${l[1]}:${l[2]}`, info);
    } else {
      let r: RegExpExecArray | null;
      if ((r = REVISION.exec(rest))) s.revisions.set(`${r[1]}:${r[2]}`, info);
      else if ((r = TAG.exec(rest))) s.tags.set(r[1]!, { link: info, digest: null });
      else if ((r = REFERRER.exec(rest))) {
        const subject = `${r[1]}:${r[2]}`;
        s.referrers.set(subject, [...(s.referrers.get(subject) ?? []), `${r[3]}:${r[4]}`]);
      }
    }
  }
  await mapLimit(
    [...repos.values()].flatMap((s) => [...s.tags].map(([tag, t]) => ({ s, tag, t }))),
    16,
    async ({ s, tag, t }) => {
      const raw = await driver.getContent(tagCurrentLink(s.name, tag)).catch(() => null);
      t.digest = raw ? raw.toString('utf8').trim() : null;
    },
  );
  return repos;
}

/** Runs `fn` over `items`, at most `limit` at a time. */
export async function mapLimit<T>(items: Iterable<T>, limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const it = items[Symbol.iterator]();
  const worker = async (): Promise<void> => {
    for (let next = it.next(); !next.done; next = it.next()) await fn(next.value);
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

/** Two modTimes as the same write: S3's HEAD has whole seconds, its listing milliseconds. */
export const sameTime = (a: Date, b: Date): boolean => Math.floor(a.getTime() / 1000) === Math.floor(b.getTime() / 1000);
