import type { StorageDriver } from './driver.js';
import { PathNotFoundError } from './driver.js';
import { parseDigest, type Digest } from './digest.js';
import { StoreError } from './errors.js';
import { ensureIndexBuilt, hasRevisions, indexRepository, listIndexed, unindexRepository, type ListPage } from './catalog-index.js';
import { beginPush, pausePoint, type PushGuard } from './gc-guard.js';
import { parseManifest, type Descriptor, type ParsedManifest } from './manifest.js';
import * as paths from './paths.js';

export interface StoredManifest {
  digest: string;
  bytes: Buffer;
  parsed: ParsedManifest;
}

/**
 * Manifest revisions, tags and the referrers index of each repository. Bytes
 * are kept as blobs, so a manifest is stored byte-exact and its digest is that
 * of the bytes. Bytes are immutable by digest, so they (and their parse) are
 * cached in memory — but a cached entry answers only while storage still has
 * the bytes: it is checked again (one stat) when its last check is older than
 * REVALIDATE_MS. Links are read from storage each time, so every instance over
 * the same storage sees a moved tag at once. A PUT first claims what it names
 * against GC, then checks that it exists, and writes its links again if GC
 * pruned the repository meanwhile (gc-guard.ts, docs/gc.md); it records the
 * repository in the catalog index (catalog-index.ts).
 */
export class ManifestStore {
  private readonly cache = new Map<string, { stored: StoredManifest; checked: number }>();
  private cachedBytes = 0;
  private indexReady: Promise<void> | undefined;

  constructor(
    private readonly driver: StorageDriver,
    private readonly cacheLimit = 64 * 1024 * 1024,
  ) {}

  async exists(repo: string, digest: Digest): Promise<boolean> {
    return (await this.driver.stat(paths.revisionLink(repo, digest))) !== null;
  }

  /**
   * The manifest a tag points at. The tag's link is read every time (so a moved
   * tag is seen at once); the revision check of get() is skipped because a
   * revision loses its tags before it is removed.
   */
  async getTagged(repo: string, tag: string): Promise<StoredManifest> {
    const digest = await this.resolve(repo, tag);
    return (await this.cached(repo, digest)) ?? this.get(repo, digest);
  }

  async get(repo: string, digest: Digest): Promise<StoredManifest> {
    if (!(await this.exists(repo, digest))) throw unknownManifest(repo, digest.value);
    const cached = await this.cached(repo, digest);
    if (cached) return cached;
    let bytes: Buffer;
    try {
      bytes = await this.driver.getContent(paths.blobData(digest));
    } catch (err) {
      if (err instanceof PathNotFoundError) throw unknownManifest(repo, digest.value);
      throw err;
    }
    const stored = { digest: digest.value, bytes, parsed: parseManifest(bytes, null) };
    this.remember(stored);
    return stored;
  }

  /** The cached manifest, checked against storage when its last check is older than REVALIDATE_MS; a loss evicts it. */
  private async cached(repo: string, digest: Digest): Promise<StoredManifest | null> {
    const entry = this.cache.get(digest.value);
    if (!entry) return null;
    if (Date.now() - entry.checked > REVALIDATE_MS) {
      if (!(await this.driver.stat(paths.blobData(digest)))) {
        this.forget(digest.value);
        throw unknownManifest(repo, digest.value);
      }
      entry.checked = Date.now();
    }
    return entry.stored;
  }

  /**
   * Stores verified bytes; `parsed` is the result of parseManifest on them.
   * The push announces itself and protects what the manifest names before it
   * checks that it exists (a check before that could be undone by a GC run
   * that began in between); a named blob or child that is not there is
   * `blob-unknown`, which the registry answers MANIFEST_BLOB_UNKNOWN.
   */
  async put(repo: string, digest: Digest, bytes: Buffer, parsed: ParsedManifest, tag?: string): Promise<void> {
    const children = parsed.manifests.map((m) => parseDigest(m.digest));
    const guard = await beginPush(this.driver, { repo, tag, manifests: [digest, ...children].map((d) => d.value), blobs: parsed.blobs.map((b) => b.value) });
    try {
      const [blobsKept, childrenKept, [bytesKept]] = await Promise.all([guard.protect(parsed.blobs), guard.protect(children), guard.protect([digest])]);
      await pausePoint(this.driver, 'push:protected', digest.value);
      for (const [i, blob] of parsed.blobs.entries()) {
        if (!blobsKept[i] || !(await this.driver.stat(paths.layerLink(repo, blob)))) throw blobUnknown(repo, blob, `manifest references blob ${blob.value}, which is not in ${repo}`);
      }
      for (const [i, child] of children.entries()) {
        if (!childrenKept[i] || !(await this.exists(repo, child))) throw blobUnknown(repo, child, `index references manifest ${child.value}, which is not in ${repo}`);
        await this.protectChild(guard, repo, child, 1);
      }
      await pausePoint(this.driver, 'push:checked', digest.value);
      if (!bytesKept) await this.driver.putContent(paths.blobData(digest), bytes);
      guard.assertFresh();
      await this.writeLinks(repo, digest, bytes, parsed, tag);
      await pausePoint(this.driver, 'push:linked', digest.value);
      if (await guard.prunedMeanwhile(repo)) await this.writeLinks(repo, digest, bytes, parsed, tag);
    } finally {
      await guard.end();
    }
    this.remember({ digest: digest.value, bytes, parsed });
  }

  /** An index's child is protected already: its blobs (and children) now, checked to be stored. */
  private async protectChild(guard: PushGuard, repo: string, child: Digest, depth: number): Promise<void> {
    let parsed: ParsedManifest;
    try {
      parsed = parseManifest(await this.driver.getContent(paths.blobData(child)), null);
    } catch (err) {
      if (err instanceof PathNotFoundError) throw blobUnknown(repo, child, `index references manifest ${child.value}, whose bytes are gone`);
      throw err;
    }
    const grandchildren = parsed.manifests.map((m) => parseDigest(m.digest));
    const kept = await guard.protect([...parsed.blobs, ...grandchildren]);
    const missing = [...parsed.blobs, ...grandchildren].find((_, i) => !kept[i]);
    if (missing) throw blobUnknown(repo, missing, `index references manifest ${child.value}, which names ${missing.value}, which is not stored`);
    if (depth < 8) for (const g of grandchildren) await this.protectChild(guard, repo, g, depth + 1);
  }

  /**
   * Links of a PUT, and the repository's catalog entry (after the revision
   * link: catalog-index.ts relies on that order). Children's revision links are
   * rewritten too: that tells GC's pruning they are wanted.
   */
  private async writeLinks(repo: string, digest: Digest, bytes: Buffer, parsed: ParsedManifest, tag?: string): Promise<void> {
    await Promise.all(parsed.manifests.map((m) => this.driver.putContent(paths.revisionLink(repo, parseDigest(m.digest)), m.digest)));
    await this.driver.putContent(paths.revisionLink(repo, digest), digest.value);
    const entry: Descriptor = { mediaType: parsed.mediaType, digest: digest.value, size: bytes.length };
    if (parsed.artifactType) entry.artifactType = parsed.artifactType;
    if (parsed.annotations) entry.annotations = parsed.annotations;
    const subject = parsed.subject;
    await Promise.all([
      subject ? this.driver.putContent(paths.referrerEntry(repo, parseDigest(subject.digest), digest), JSON.stringify(entry)) : null,
      tag === undefined ? null : this.tag(repo, tag, digest),
      indexRepository(this.driver, repo),
    ]);
  }

  async tag(repo: string, tag: string, digest: Digest): Promise<void> {
    await this.driver.putContent(paths.tagIndexLink(repo, tag, digest), digest.value);
    await this.driver.putContent(paths.tagCurrentLink(repo, tag), digest.value);
  }

  async resolve(repo: string, tag: string): Promise<Digest> {
    try {
      return parseDigest((await this.driver.getContent(paths.tagCurrentLink(repo, tag))).toString('utf8').trim());
    } catch (err) {
      if (err instanceof PathNotFoundError) throw new StoreError('tag-unknown', `tag ${tag} is not in ${repo}`);
      throw err;
    }
  }

  async untag(repo: string, tag: string): Promise<void> {
    await this.resolve(repo, tag);
    await this.driver.delete(paths.tagDir(repo, tag));
  }

  /** Removes a revision, every tag that points at it, and its referrers entry. */
  async delete(repo: string, digest: Digest): Promise<void> {
    const stored = await this.get(repo, digest);
    for (const tag of await this.tags(repo)) {
      const current = await this.resolve(repo, tag).catch(() => null);
      if (current?.value === digest.value) await this.driver.delete(paths.tagDir(repo, tag));
    }
    if (stored.parsed.subject) {
      await this.driver.delete(paths.referrerEntry(repo, parseDigest(stored.parsed.subject.digest), digest));
    }
    await this.driver.delete(paths.revisionLink(repo, digest).replace(/\/link$/, ''));
    if (!(await hasRevisions(this.driver, repo))) await unindexRepository(this.driver, repo);
  }

  async tags(repo: string): Promise<string[]> {
    return this.driver.list(paths.tagsDir(repo));
  }

  async hasRepository(repo: string): Promise<boolean> {
    return (await this.driver.stat(paths.repoDir(repo))) !== null;
  }

  /** Descriptors of the manifests in `repo` whose subject is `subject`. */
  async referrers(repo: string, subject: Digest): Promise<Descriptor[]> {
    const dir = paths.referrersDir(repo, subject);
    const out: Descriptor[] = [];
    for (const name of await this.driver.list(dir)) {
      const raw = await this.driver.getContent(`${dir}/${name}`).catch(() => null);
      if (raw) out.push(JSON.parse(raw.toString('utf8')) as Descriptor);
    }
    return out.sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
  }

  /**
   * Names of the repositories that hold a manifest, sorted; one page of them
   * with `last`/`limit`. From the index (catalog-index.ts), not a walk.
   */
  async repositories(page: ListPage = {}): Promise<string[]> {
    // One build at a time per process; a failed one is tried again on the next call.
    this.indexReady ??= ensureIndexBuilt(this.driver).catch((err: unknown) => {
      this.indexReady = undefined;
      throw err;
    });
    await this.indexReady;
    return listIndexed(this.driver, page);
  }

  /** Digests of every revision of `repo`. */
  async revisions(repo: string): Promise<Digest[]> {
    const out: Digest[] = [];
    for (const alg of await this.driver.list(paths.revisionsDir(repo))) {
      for (const hex of await this.driver.list(`${paths.revisionsDir(repo)}/${alg}`)) {
        out.push(parseDigest(`${alg}:${hex}`));
      }
    }
    return out;
  }

  private remember(stored: StoredManifest): void {
    if (this.cache.has(stored.digest) || stored.bytes.length > this.cacheLimit / 16) return;
    this.cache.set(stored.digest, { stored, checked: Date.now() });
    this.cachedBytes += stored.bytes.length;
    for (const [digest] of this.cache) {
      if (this.cachedBytes <= this.cacheLimit) break;
      this.forget(digest);
    }
  }

  private forget(digest: string): void {
    const entry = this.cache.get(digest);
    if (!entry) return;
    this.cache.delete(digest);
    this.cachedBytes -= entry.stored.bytes.length;
  }
}

/** How long a cached manifest answers without a look at storage (one stat): a loss shows within this. */
export const REVALIDATE_MS = 1000;

const unknownManifest = (repo: string, ref: string): StoreError =>
  new StoreError('manifest-unknown', `manifest ${ref} is not in ${repo}`);
const blobUnknown = (repo: string, digest: Digest, message: string): StoreError => new StoreError('blob-unknown', message, { digest: digest.value, repository: repo });
