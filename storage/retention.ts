import type { FileInfo, StorageDriver } from './driver.js';
import { parseDigest } from './digest.js';
import { globToRegExp, type RetentionRule } from './gc-config.js';
import type { RepoState } from './gc-scan.js';
import type { ParsedManifest } from './manifest.js';
import * as paths from './paths.js';

/*
 * Retention, applied by GC before it marks. Per repository, the first rule
 * whose glob matches decides:
 * - tags: with keepLast and/or keepTags, a tag stays when it is among the
 *   keepLast most recently pushed (its current link's modTime) or matches
 *   keepTags; every other tag is deleted. A rule with neither keeps all tags.
 * - untagged manifests: a revision no remaining tag reaches — directly, as a
 *   child of a reached index, or as a referrer of a reached manifest — is
 *   deleted once its revision link is older than the rule's untaggedAfter, or
 *   (no rule says) older than the grace period when deleteUntagged is set.
 *   Never younger than the grace period: a client may push children and
 *   referrers by digest before the index or tag that reaches them.
 * A tag or revision link written less than the clock slack (a second) before
 * the run began is not deleted either. Before deleting, applyPlan compares the
 * link's modTime with the scan's to the millisecond: a push that wrote it again
 * meanwhile keeps it.
 * Without a rule or deleteUntagged every revision is a root and stays.
 */
export interface PrunePlan {
  repo: string;
  tags: { tag: string; digest: string | null; link: FileInfo }[];
  revisions: { digest: string; link: FileInfo }[];
}

export interface PlanOptions {
  rules: RetentionRule[];
  deleteUntagged: boolean;
  gracePeriod: number;
  /** The storage's clock, ms. */
  now: number;
  /** A stored manifest, parsed; null when unreadable. */
  readManifest(digest: string): Promise<ParsedManifest | null>;
  /** Digests recent pushes to the repository named: roots like tagged ones. */
  extraRoots?: string[];
  /** ms of clock slack towards keeping; default 1000. */
  slack?: number;
}

export function ruleFor(rules: RetentionRule[], repo: string): RetentionRule | undefined {
  return rules.find((r) => globToRegExp(r.repositories).test(repo));
}

const SLACK_MS = 1000;

function tagsToDelete(s: RepoState, rule: RetentionRule | undefined, now: number, slack: number): PrunePlan['tags'] {
  if (!rule || (rule.keepLast === undefined && rule.keepTags === undefined)) return [];
  const byAge = [...s.tags].sort(([ta, a], [tb, b]) => b.link.modTime.getTime() - a.link.modTime.getTime() || (ta < tb ? 1 : -1));
  const keep = new Set(byAge.slice(0, rule.keepLast ?? 0).map(([tag]) => tag));
  const pattern = rule.keepTags === undefined ? null : new RegExp(rule.keepTags);
  return byAge
    .filter(([tag, t]) => !keep.has(tag) && !pattern?.test(tag) && now - t.link.modTime.getTime() > slack)
    .map(([tag, t]) => ({ tag, digest: t.digest, link: t.link }));
}

/** Digests reachable from `roots` through index children and referrers, within the repository. */
async function reachable(s: RepoState, roots: string[], opts: PlanOptions): Promise<Set<string>> {
  const seen = new Set<string>();
  const queue = [...roots];
  for (let d = queue.pop(); d !== undefined; d = queue.pop()) {
    if (seen.has(d)) continue;
    seen.add(d);
    const parsed = s.revisions.has(d) ? await opts.readManifest(d) : null;
    for (const child of parsed?.manifests ?? []) queue.push(child.digest);
    queue.push(...(s.referrers.get(d) ?? []));
  }
  return seen;
}

export async function planRetention(s: RepoState, opts: PlanOptions): Promise<PrunePlan> {
  const rule = ruleFor(opts.rules, s.name);
  const slack = opts.slack ?? SLACK_MS;
  const tags = tagsToDelete(s, rule, opts.now, slack);
  const plan: PrunePlan = { repo: s.name, tags, revisions: [] };
  const maxAge = rule?.untaggedAfter ?? (opts.deleteUntagged ? 0 : undefined);
  if (maxAge === undefined) return plan;
  const gone = new Set(tags.map((t) => t.tag));
  const roots = [...s.tags].filter(([tag, t]) => !gone.has(tag) && t.digest).map(([, t]) => t.digest!);
  roots.push(...(opts.extraRoots ?? []));
  const reached = await reachable(s, roots, opts);
  // A second of slack towards keeping: S3's HEAD has whole seconds.
  const limit = Math.max(maxAge, opts.gracePeriod) + slack;
  for (const [digest, link] of s.revisions) {
    if (!reached.has(digest) && opts.now - link.modTime.getTime() > limit) plan.revisions.push({ digest, link });
  }
  return plan;
}

export interface PruneResult {
  tags: string[];
  revisions: string[];
}

/**
 * Whether the link at `path` is the very write the scan saw: its modTime read
 * from a listing (milliseconds on S3 too, where a HEAD has whole seconds), so
 * a push that wrote the same content again since is told apart.
 */
async function unchanged(driver: StorageDriver, path: string, scanned: FileInfo): Promise<boolean> {
  for await (const info of driver.walk(path.slice(0, path.lastIndexOf('/')))) {
    if (info.path === path) return info.modTime.getTime() === scanned.modTime.getTime();
  }
  return false;
}

/**
 * Carries out a plan; the caller holds the repository's pruning marker
 * (gc-guard.ts). Each tag and revision is re-read first and left alone when a
 * push rewrote it since the scan; a push that writes after the re-read sees
 * the marker and writes its links again once this is done.
 */
export async function applyPlan(
  driver: StorageDriver,
  plan: PrunePlan,
  readManifest: PlanOptions['readManifest'],
  signal?: AbortSignal,
): Promise<PruneResult> {
  const done: PruneResult = { tags: [], revisions: [] };
  const { repo } = plan;
  for (const t of plan.tags) {
    signal?.throwIfAborted();
    if (!(await unchanged(driver, paths.tagCurrentLink(repo, t.tag), t.link))) continue;
    const now = (await driver.getContent(paths.tagCurrentLink(repo, t.tag)).catch(() => null))?.toString('utf8').trim() ?? null;
    if (now !== t.digest) continue;
    await driver.delete(paths.tagDir(repo, t.tag));
    done.tags.push(t.tag);
  }
  for (const r of plan.revisions) {
    signal?.throwIfAborted();
    const digest = parseDigest(r.digest);
    if (!(await unchanged(driver, paths.revisionLink(repo, digest), r.link))) continue;
    const subject = (await readManifest(r.digest))?.subject;
    if (subject) await driver.delete(paths.referrerEntry(repo, parseDigest(subject.digest), digest));
    await driver.delete(paths.revisionLink(repo, digest).replace(/\/link$/, ''));
    done.revisions.push(r.digest);
  }
  return done;
}
