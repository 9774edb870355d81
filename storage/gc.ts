import type { FileInfo, StorageDriver } from './driver.js';
import { parseDigest } from './digest.js';
import { GC_DEFAULTS, type RetentionRule } from './gc-config.js';
import { keepPath, present, pruningPath, readRecords, recordBlobs, recordManifests, removeMarker, sweepingPath, type PushRecord } from './gc-guard.js';
import { beginRun, clearStaleRuns, type GcRun } from './gc-run.js';
import { mapLimit, sameTime, scanRepositories, type RepoState } from './gc-scan.js';
import { purgeLinks, purgeSessions, repairIndex } from './gc-tidy.js';
import { parseManifest, type ParsedManifest } from './manifest.js';
import * as paths from './paths.js';
import { applyPlan, planRetention, type PrunePlan } from './retention.js';
import type { Store } from './store.js';

/*
 * Online mark and sweep; pushes go on while it runs. The protocol, its
 * invariant and why each interleaving is safe: docs/gc.md (markers: gc-guard.ts).
 * 1. begin the run: its clock (mark start), then running/<run>; read the
 *    records of pushes in progress;
 * 2. scan: one walk of the repositories tree (revisions, tags, referrers, links, uploads);
 * 3. retention and untagged manifests (retention.ts) under per-repository
 *    pruning markers, sparing what the records (read again after the markers
 *    are written) name;
 * 4. mark: every revision and every tag's target is a root and marks its
 *    bytes, config, layers, index children (recursively) and subject;
 *    referrers are revisions, so they mark themselves; the records' manifests
 *    and blobs are marked the same way;
 * 5. sweep: a blob not marked and written before (mark start − grace period −
 *    clock slack) is deleted under this run's sweeping marker, unless a push
 *    left a keep marker for this run or the blob was written again since the walk;
 * 6. `_layers` links whose blob is gone, abandoned upload sessions, the catalog index.
 * A manifest that cannot be read or a named blob that is missing is damage
 * (`problems`), unless it was deleted while the run went on (`skipped`).
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
  /** ms of clock slack towards keeping (S3's HEAD has whole seconds); default 1000. */
  clockSlack?: number;
  /** Test-only pauses, to make races with pushes deterministic. */
  hooks?: {
    /** At each step: gc:begin, gc:announced, gc:records, gc:scanned, gc:pruning, gc:pruned, gc:marked, gc:walked, and per blob gc:sweep, gc:intent, gc:decided, gc:deleted (detail: the digest). */
    at?(point: string, detail?: string): Promise<void>;
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
  /** Damage: a revision or tag whose manifest cannot be read, a manifest naming a blob that is missing. */
  problems: string[];
  /** Harmless races: what looked damaged had been deleted meanwhile (by a client or another GC). */
  skipped: string[];
  durationMs: number;
}

const WEEK = 7 * 24 * 3600_000;

type ReadManifest = (digest: string) => Promise<ParsedManifest | null>;
type Pause = (point: string, detail?: string) => Promise<void>;

interface RunContext {
  store: Store;
  run: GcRun;
  opts: GcOptions;
  grace: number;
  slack: number;
  dryRun: boolean;
  at: Pause;
  readManifest: ReadManifest;
  report: GcReport;
}

export async function collectGarbage(store: Store, opts: GcOptions = {}): Promise<GcReport> {
  const { driver } = store;
  const started = Date.now();
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
    skipped: [],
    durationMs: 0,
  };
  const manifests = new Map<string, Promise<ParsedManifest | null>>();
  const readManifest: ReadManifest = (digest) => {
    let p = manifests.get(digest);
    if (!p) {
      p = driver.getContent(paths.blobData(parseDigest(digest))).then((bytes) => parseManifest(bytes, null), () => null);
      manifests.set(digest, p);
    }
    return p;
  };
  const at: Pause = (point, detail) => opts.hooks?.at?.(point, detail) ?? Promise.resolve();
  await at('gc:begin');
  const run = await beginRun(driver, dryRun);
  const ctx: RunContext = { store, run, opts, grace: opts.gracePeriod ?? GC_DEFAULTS.gracePeriod, slack: opts.clockSlack ?? 1000, dryRun, at, readManifest, report };
  try {
    await at('gc:announced');
    if (!dryRun) await clearStaleRuns(driver, run.now());
    // After running/<run>: every push that did not see this run has its record here (gc-guard.ts).
    const records = await readRecords(driver, run.now(), !dryRun);
    await at('gc:records');
    const repos = await scanRepositories(driver, opts.signal);
    report.repositories = repos.size;
    log(`gc: scanned ${repos.size} repositories, ${records.length} pushes in progress`);
    await at('gc:scanned');
    await prune(ctx, repos, records);
    await at('gc:pruned');
    const { marked, named } = await mark(ctx, repos, records);
    log(`gc: ${marked.size} digests referenced by ${report.manifests} manifests and pushes in progress`);
    await at('gc:marked');
    await opts.hooks?.afterMark?.();
    const existing = await sweep(ctx, marked, named);
    log(`gc: ${report.blobs.swept} of ${report.blobs.total} blobs ${dryRun ? 'would be ' : ''}swept, ${report.blobs.bytesFreed} bytes`);
    report.linksPurged = await purgeLinks(store, repos, existing, dryRun);
    report.uploadsPurged = await purgeSessions(store, repos, new Date(run.now() - (opts.uploadMaxAge ?? WEEK)), dryRun);
    report.index = await repairIndex(store, repos, dryRun);
  } finally {
    await run.end(log);
  }
  report.durationMs = Date.now() - started;
  return report;
}

const recordKey = (r: PushRecord): string => JSON.stringify(r);

/**
 * Retention and untagged manifests (retention.ts). Each repository with
 * something to delete gets this run's pruning marker ("active") first; then
 * the records are read again, and what they name is spared; the marker says
 * "done" when the repository is pruned and stays until the run ends.
 */
async function prune(ctx: RunContext, repos: Map<string, RepoState>, records: PushRecord[]): Promise<void> {
  const { store, run, opts, report } = ctx;
  const { driver } = store;
  const plans: { s: RepoState; plan: PrunePlan }[] = [];
  await mapLimit(repos.values(), 4, async (s) => {
    const mine = records.filter((r) => r.repo === s.name);
    const plan = await planRetention(s, {
      rules: opts.retention ?? [],
      deleteUntagged: opts.deleteUntagged ?? false,
      gracePeriod: ctx.grace,
      now: run.markStart,
      readManifest: ctx.readManifest,
      extraRoots: mine.flatMap((r) => [...recordManifests(r), ...recordBlobs(r)]),
      slack: ctx.slack,
    });
    plan.tags = plan.tags.filter((t) => !mine.some((r) => r.tag === t.tag));
    if (plan.tags.length > 0 || plan.revisions.length > 0) plans.push({ s, plan });
  });
  if (plans.length === 0) return;
  if (ctx.dryRun) {
    for (const { s, plan } of plans) record(s, { tags: plan.tags.map((t) => t.tag), revisions: plan.revisions.map((r) => r.digest) });
    return;
  }
  await mapLimit(plans, 8, ({ s }) => driver.putContent(pruningPath(run.id, s.name), 'active'));
  await ctx.at('gc:pruning');
  // Pushes that began before the markers were written and did not see this run are in the records now.
  const seen = new Set(records.map(recordKey));
  for (const r of await readRecords(driver, run.now(), false)) if (!seen.has(recordKey(r))) records.push(r);
  await mapLimit(plans, 4, async ({ s, plan }) => {
    const mine = records.filter((r) => r.repo === s.name);
    const spared = new Set(mine.flatMap(recordManifests));
    plan.tags = plan.tags.filter((t) => !mine.some((r) => r.tag === t.tag));
    plan.revisions = plan.revisions.filter((r) => !spared.has(r.digest));
    run.assertAlive();
    record(s, await applyPlan(driver, plan, ctx.readManifest, opts.signal));
    await driver.putContent(pruningPath(run.id, s.name), 'done');
  });

  function record(s: RepoState, done: { tags: string[]; revisions: string[] }): void {
    for (const tag of done.tags) s.tags.delete(tag);
    for (const digest of done.revisions) s.revisions.delete(digest);
    report.tagsDeleted.push(...done.tags.map((t) => `${s.name}:${t}`));
    report.manifestsDeleted.push(...done.revisions.map((d) => `${s.name}@${d}`));
  }
}

/** Who names a blob: the revision (or tag) through which mark reached it. */
interface Owner {
  repo: string;
  /** The root's digest (the revision, or the tag's target). */
  root: string;
  tag?: string;
}

/**
 * Marks from every revision, every tag's target, and the records. Returns the
 * marked digests, and for each blob a manifest in storage names, one owner
 * (for telling damage from a race after the sweep's walk).
 */
async function mark(ctx: RunContext, repos: Map<string, RepoState>, records: PushRecord[]): Promise<{ marked: Set<string>; named: Map<string, Owner> }> {
  const { report, readManifest, opts } = ctx;
  const marked = new Set<string>();
  const named = new Map<string, Owner>();
  const roots: Owner[] = [];
  for (const s of repos.values()) {
    for (const digest of s.revisions.keys()) roots.push({ repo: s.name, root: digest });
    for (const [tag, t] of s.tags) if (t.digest && !s.revisions.has(t.digest)) roots.push({ repo: s.name, root: t.digest, tag });
  }
  report.manifests = roots.length;
  // Children are followed too: their revisions may be gone while an index still names them.
  const visited = new Set<string>();
  const visit = async (digest: string, owner: Owner | null, depth: number): Promise<void> => {
    if (visited.has(digest)) return;
    visited.add(digest);
    marked.add(digest);
    const parsed = await readManifest(digest);
    if (!parsed) return;
    for (const b of parsed.blobs) {
      marked.add(b.value);
      if (owner && !named.has(b.value)) named.set(b.value, owner);
    }
    if (parsed.subject) marked.add(parsed.subject.digest);
    for (const child of parsed.manifests) if (depth < 8) await visit(child.digest, owner, depth + 1);
  };
  const unreadable: Owner[] = [];
  await mapLimit(roots, 16, async (owner) => {
    opts.signal?.throwIfAborted();
    if (!(await readManifest(owner.root))) unreadable.push(owner);
    await visit(owner.root, owner, 0);
  });
  for (const r of records) {
    for (const d of recordBlobs(r)) marked.add(d);
    for (const d of recordManifests(r)) await visit(d, null, 1);
  }
  for (const o of unreadable) await judgeUnreadable(ctx, o);
  return { marked, named };
}

const describe = (o: Owner): string => (o.tag ? `${o.repo}:${o.tag} (${o.root})` : `${o.repo}@${o.root}`);

/** Whether the tag still names the root, or the revision is still there. */
async function stillThere(driver: StorageDriver, o: Owner): Promise<boolean> {
  if (o.tag) return (await present(driver, paths.tagCurrentLink(o.repo, o.tag)))?.toString('utf8').trim() === o.root;
  return (await driver.stat(paths.revisionLink(o.repo, parseDigest(o.root)))) !== null;
}

/** A root whose manifest could not be read: damage if it is still there, a race if it was deleted meanwhile. */
async function judgeUnreadable(ctx: RunContext, o: Owner): Promise<void> {
  const { driver } = ctx.store;
  if (!(await stillThere(driver, o))) ctx.report.skipped.push(`${describe(o)}: deleted while GC ran`);
  else if (await driver.stat(paths.blobData(parseDigest(o.root)))) ctx.report.problems.push(`${describe(o)}: manifest bytes unreadable`);
  else ctx.report.problems.push(`${describe(o)}: manifest bytes missing`);
}

/** A blob a stored manifest names but the sweep's walk did not find: damage unless it or its owner changed meanwhile. */
async function judgeMissing(driver: StorageDriver, report: GcReport, blob: string, o: Owner): Promise<void> {
  if (await driver.stat(paths.blobData(parseDigest(blob)))) return;
  if (await stillThere(driver, o)) report.problems.push(`${describe(o)}: names blob ${blob}, which is missing`);
  else report.skipped.push(`${describe(o)}: deleted while GC ran (it named ${blob}, gone too)`);
}

/**
 * Deletes blobs not marked and written before the cutoff, each under this
 * run's sweeping marker, unless a push left this run a keep marker for it or
 * it was written again since the walk. Returns the digests still stored.
 */
async function sweep(ctx: RunContext, marked: Set<string>, named: Map<string, Owner>): Promise<Set<string>> {
  const { store, run, opts, report, at } = ctx;
  const { driver } = store;
  const cutoff = run.markStart - ctx.grace - ctx.slack;
  const existing = new Set<string>();
  const candidates: { digest: string; info: FileInfo }[] = [];
  for await (const { digest, info } of store.blobs.all()) {
    opts.signal?.throwIfAborted();
    report.blobs.total++;
    existing.add(digest.value);
    if (marked.has(digest.value)) report.blobs.marked++;
    else if (info.modTime.getTime() < cutoff) candidates.push({ digest: digest.value, info });
    else report.blobs.keptYoung++;
  }
  for (const [blob, owner] of named) if (!existing.has(blob)) await judgeMissing(driver, report, blob, owner);
  await at('gc:walked');
  const swept = (digest: string, size: number): void => {
    existing.delete(digest);
    report.blobs.swept++;
    report.blobs.bytesFreed += size;
    report.sweptBlobs.push({ digest, size });
  };
  await mapLimit(candidates, 8, async ({ digest, info }) => {
    opts.signal?.throwIfAborted();
    if (ctx.dryRun) return swept(digest, info.size);
    const d = parseDigest(digest);
    await at('gc:sweep', digest);
    await driver.putContent(sweepingPath(run.id, d), run.id);
    try {
      await at('gc:intent', digest);
      const [keep, blob] = await Promise.all([present(driver, keepPath(run.id, d)), driver.stat(paths.blobData(d))]);
      if (keep || !blob || !sameTime(blob.modTime, info.modTime)) {
        report.blobs.keptYoung++;
        return;
      }
      await opts.hooks?.beforeDelete?.(digest);
      await at('gc:decided', digest);
      run.assertAlive();
      await driver.delete(paths.blobDir(d));
      swept(digest, blob.size);
      await at('gc:deleted', digest);
    } finally {
      await removeMarker(driver, sweepingPath(run.id, d));
    }
  });
  return existing;
}
