import { randomUUID } from 'node:crypto';
import type { FileInfo } from './driver.js';
import { parseDigest } from './digest.js';
import { GC_DEFAULTS, type RetentionRule } from './gc-config.js';
import {
  clearStaleMarkers,
  GC_CLOCK,
  INTENT_RENEW_MS,
  readRecords,
  RUNNING_DIR,
  storageSkew,
  sweepingPath,
  touchedPath,
  type PushRecord,
} from './gc-guard.js';
import { mapLimit, scanRepositories, type RepoState } from './gc-scan.js';
import { purgeLinks, purgeSessions, repairIndex } from './gc-tidy.js';
import { parseManifest, type ParsedManifest } from './manifest.js';
import * as paths from './paths.js';
import { applyPlan, planRetention } from './retention.js';
import type { Store } from './store.js';

/*
 * Online mark and sweep; pushes go on while it runs (gc-guard.ts has the
 * handshake). Times are the storage's modTimes, with a second of slack towards keeping.
 * 1. announce the run (running/), then read the records of recent pushes;
 * 2. scan: one walk of the repositories tree (revisions, tags, referrers, links, uploads);
 * 3. retention and untagged manifests (retention.ts), sparing what recent pushes wrote;
 * 4. mark: every revision is a root (untagged ones too, unless step 3 deleted
 *    them) and marks its bytes, config, layers, index children (recursively) and
 *    subject; referrers are revisions, so they mark themselves; recent pushes'
 *    digests are marked too;
 * 5. sweep: a blob not marked, older than the grace period and not touched
 *    since (mark start − grace period) is deleted under its sweeping marker,
 *    after its age and touch were read again;
 * 6. `_layers` links whose blob is gone, abandoned upload sessions, the catalog index.
 */
export interface GcOptions {
  /** ms; default 1 hour. */
  gracePeriod?: number;
  deleteUntagged?: boolean;
  retention?: RetentionRule[];
  /** Report what would be deleted; delete nothing. */
  dryRun?: boolean;
  /** Upload sessions started longer ago than this (ms) are removed; default 7 days. */
  uploadMaxAge?: number;
  signal?: AbortSignal;
  log?: (message: string) => void;
  /** Test-only pauses, to make races with pushes deterministic. */
  hooks?: {
    afterMark?(): Promise<void>;
    /** After GC decided to delete the blob (its sweeping marker is written), before it does. */
    beforeDelete?(digest: string): Promise<void>;
  };
}

export interface GcReport {
  dryRun: boolean;
  repositories: number;
  /** Revisions marked from. */
  manifests: number;
  tagsDeleted: string[];
  manifestsDeleted: string[];
  blobs: { total: number; marked: number; swept: number; bytesFreed: number; keptYoung: number };
  sweptBlobs: { digest: string; size: number }[];
  linksPurged: number;
  uploadsPurged: number;
  index: { added: number; removed: number };
  problems: string[];
  durationMs: number;
}

const SLACK_MS = 1000;
const WEEK = 7 * 24 * 3600_000;

type ReadManifest = (digest: string) => Promise<ParsedManifest | null>;

export async function collectGarbage(store: Store, opts: GcOptions = {}): Promise<GcReport> {
  const { driver } = store;
  const started = Date.now();
  const grace = opts.gracePeriod ?? GC_DEFAULTS.gracePeriod;
  const dryRun = opts.dryRun ?? false;
  const log = opts.log ?? (() => undefined);
  const report: GcReport = {
    dryRun,
    repositories: 0,
    manifests: 0,
    tagsDeleted: [],
    manifestsDeleted: [],
    blobs: { total: 0, marked: 0, swept: 0, bytesFreed: 0, keptYoung: 0 },
    sweptBlobs: [],
    linksPurged: 0,
    uploadsPurged: 0,
    index: { added: 0, removed: 0 },
    problems: [],
    durationMs: 0,
  };
  const skew = await storageSkew(driver, GC_CLOCK);
  const now = () => Date.now() + skew;
  const markStart = now();
  const run = dryRun ? null : await announceRun(store);
  try {
    if (!dryRun) await clearStaleMarkers(driver, markStart);
    // After announcing the run: every push that did not see it has its record here (gc-guard.ts).
    const records = await readRecords(driver, markStart - grace - SLACK_MS, !dryRun);
    const manifests = new Map<string, Promise<ParsedManifest | null>>();
    const readManifest: ReadManifest = (digest) => {
      let p = manifests.get(digest);
      if (!p) {
        p = driver.getContent(paths.blobData(parseDigest(digest))).then((bytes) => parseManifest(bytes, null), () => null);
        manifests.set(digest, p);
      }
      return p;
    };
    const repos = await scanRepositories(driver, opts.signal);
    report.repositories = repos.size;
    log(`gc: scanned ${repos.size} repositories, ${records.length} recent pushes`);
    await prune(store, repos, records, { ...opts, grace, markStart, readManifest }, report);
    const marked = await mark(repos, readManifest, report, opts.signal);
    for (const r of records) for (const d of r.digests) marked.add(d);
    log(`gc: ${marked.size} digests referenced by ${report.manifests} manifests and recent pushes`);
    await opts.hooks?.afterMark?.();
    const existing = await sweep(store, marked, { ...opts, grace, now, touchedSince: markStart - grace - SLACK_MS }, report);
    log(`gc: ${report.blobs.swept} of ${report.blobs.total} blobs ${dryRun ? 'would be ' : ''}swept, ${report.blobs.bytesFreed} bytes`);
    report.linksPurged = await purgeLinks(store, repos, existing, dryRun);
    report.uploadsPurged = await purgeSessions(store, repos, new Date(now() - (opts.uploadMaxAge ?? WEEK)), dryRun);
    report.index = await repairIndex(store, repos, dryRun);
  } finally {
    await run?.end();
  }
  report.durationMs = Date.now() - started;
  return report;
}

/** Writes this run's running/ marker (renewed while it runs); `end` removes it. */
async function announceRun(store: Store): Promise<{ end(): Promise<void> }> {
  const path = `${RUNNING_DIR}/${randomUUID()}`;
  const write = () => store.driver.putContent(path, new Date().toISOString());
  await write();
  const renew = setInterval(() => void write().catch(() => undefined), INTENT_RENEW_MS);
  renew.unref();
  return {
    end: async () => {
      clearInterval(renew);
      await store.driver.delete(path);
    },
  };
}

/** Retention and untagged manifests (retention.ts); what recent pushes wrote is left alone. */
async function prune(
  store: Store,
  repos: Map<string, RepoState>,
  records: PushRecord[],
  opts: GcOptions & { grace: number; markStart: number; readManifest: ReadManifest },
  report: GcReport,
): Promise<void> {
  const pushedTags = new Set(records.filter((r) => r.tag !== undefined).map((r) => `${r.repo}:${r.tag}`));
  await mapLimit(repos.values(), 4, async (s) => {
    const pushed = records.filter((r) => r.repo === s.name).flatMap((r) => r.digests);
    const plan = await planRetention(s, {
      rules: opts.retention ?? [],
      deleteUntagged: opts.deleteUntagged ?? false,
      gracePeriod: opts.grace,
      now: opts.markStart,
      readManifest: opts.readManifest,
      extraRoots: pushed,
    });
    plan.tags = plan.tags.filter((t) => !pushedTags.has(`${s.name}:${t.tag}`));
    const done = opts.dryRun
      ? { tags: plan.tags.map((t) => t.tag), revisions: plan.revisions.map((r) => r.digest) }
      : await applyPlan(store.driver, plan, opts.readManifest, opts.signal);
    for (const tag of done.tags) s.tags.delete(tag);
    for (const digest of done.revisions) s.revisions.delete(digest);
    report.tagsDeleted.push(...done.tags.map((t) => `${s.name}:${t}`));
    report.manifestsDeleted.push(...done.revisions.map((d) => `${s.name}@${d}`));
  });
}

/**
 * Deletes blobs not marked, older than the grace period and not touched since
 * `touchedSince`, each under its sweeping marker with age and touch read again
 * after the marker is written. Returns the digests still stored.
 */
async function sweep(
  store: Store,
  marked: Set<string>,
  opts: GcOptions & { grace: number; now: () => number; touchedSince: number },
  report: GcReport,
): Promise<Set<string>> {
  const { driver } = store;
  const old = (info: FileInfo): boolean => opts.now() - info.modTime.getTime() > opts.grace + SLACK_MS;
  const existing = new Set<string>();
  const candidates: string[] = [];
  for await (const { digest, info } of store.blobs.all()) {
    opts.signal?.throwIfAborted();
    report.blobs.total++;
    existing.add(digest.value);
    if (marked.has(digest.value)) report.blobs.marked++;
    else if (old(info)) candidates.push(digest.value);
    else report.blobs.keptYoung++;
  }
  await mapLimit(candidates, 8, async (digest) => {
    opts.signal?.throwIfAborted();
    const d = parseDigest(digest);
    if (!opts.dryRun) await driver.putContent(sweepingPath(d), new Date().toISOString());
    try {
      const touched = await driver.stat(touchedPath(d));
      const blob = await driver.stat(paths.blobData(d));
      if (!blob || (touched && touched.modTime.getTime() >= opts.touchedSince) || !old(blob)) {
        report.blobs.keptYoung++;
        return;
      }
      if (!opts.dryRun) {
        await opts.hooks?.beforeDelete?.(digest);
        await driver.delete(paths.blobDir(d));
        await driver.delete(touchedPath(d));
      }
      existing.delete(digest);
      report.blobs.swept++;
      report.blobs.bytesFreed += blob.size;
      report.sweptBlobs.push({ digest, size: blob.size });
    } finally {
      if (!opts.dryRun) await driver.delete(sweepingPath(d));
    }
  });
  return existing;
}

async function mark(
  repos: Map<string, RepoState>,
  readManifest: ReadManifest,
  report: GcReport,
  signal?: AbortSignal,
): Promise<Set<string>> {
  const marked = new Set<string>();
  const work = [...repos.values()].flatMap((s) => [...s.revisions.keys()].map((digest) => ({ repo: s.name, digest })));
  report.manifests = work.length;
  // Children are followed too: their revisions may be gone while an index still names them.
  const visited = new Set<string>();
  const visit = async (repo: string, digest: string, depth: number): Promise<void> => {
    if (visited.has(digest)) return;
    visited.add(digest);
    marked.add(digest);
    const parsed = await readManifest(digest);
    if (!parsed) {
      if (depth === 0) report.problems.push(`${repo}@${digest}: manifest bytes missing or unreadable`);
      return;
    }
    for (const b of parsed.blobs) marked.add(b.value);
    if (parsed.subject) marked.add(parsed.subject.digest);
    for (const child of parsed.manifests) if (depth < 8) await visit(repo, child.digest, depth + 1);
  };
  await mapLimit(work, 16, async ({ repo, digest }) => {
    signal?.throwIfAborted();
    await visit(repo, digest, 0);
  });
  return marked;
}
