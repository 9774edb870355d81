/*
 * build(): Dockerfile + context → image in the registry.
 *   1. parse, split into stages, pick the target;
 *   2. plan: expand, hash what COPY reads, compute every step's cache key (nothing runs);
 *   3. decide from the registry cache what is cached and what runs; print the plan;
 *   4. run the needed stages (in parallel where independent);
 *   5. assemble config + manifest and push them, and only the blobs the registry lacks.
 * A fully cached build does 1–3 and 5: a manifest lookup per base image and per stage, and a
 * HEAD of each tag, which already points at the same manifest.
 *
 * The worker's directory:
 *   <workerRoot>/layers/  unpacked layers (layers.ts)      <workerRoot>/blobs/  config blobs
 *   <workerRoot>/cache-mounts/  RUN --mount=type=cache     <workerRoot>/runc/   runc's state
 *   <workerRoot>/tmp/  per-build scratch, removed when the build ends
 *   <workerRoot>/contexts/  contexts the queue worker extracted
 * The root is 0700 (runner/private.ts): layers hold whatever device nodes RUN steps made.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { findRunc, privateDir, privateRoot, RuncMissingError } from '../runner/index.js';
import { BuildError, type BuildFunction, type BuildLimits, type BuildLogger, type BuildRequest, type BuildResult } from './types.js';
import { DEFAULT_BUILD_LIMITS } from './run.js';
import { BuildCache } from './cache.js';
import { BuildContext, SourceError, contextFile } from './context.js';
import { decide, planLines } from './decide.js';
import { DockerfileError } from './dockerfile/errors.js';
import { parseDockerfile } from './dockerfile/parse.js';
import { parseFrom, splitStages, targetStage, globalArgValues } from './dockerfile/stages.js';
import { StageRunner, type StageResult } from './execute.js';
import { loadIgnore } from './ignore.js';
import { sweepOnce } from './janitor.js';
import { MEDIA, configBlob, describe, manifestBlob } from './image.js';
import { LayerStore } from './layers.js';
import { makePlan, type Plan } from './plan.js';
import { Pusher } from './push.js';
import { BuildRegistry, RegistryUnavailableError, repoOf, type RepoRef } from './registry.js';
import { Resolver } from './resolve.js';

/** The worker's directories, 0700 whatever the umask (contexts/ is the queue worker's). */
const LAYOUT = ['layers', 'layers/sha256', 'blobs', 'blobs/sha256', 'cache-mounts', 'runc', 'tmp', 'contexts'];

export const build: BuildFunction = async (req, log, opts) => {
  const started = Date.now();
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const registry = new BuildRegistry(join(opts.workerRoot, 'blobs'));
  const scratch = join(opts.workerRoot, 'tmp', `build-${process.pid}-${randomBytes(6).toString('hex')}`);
  try {
    if (opts.signal?.aborted) throw new BuildError('the build was cancelled', 'user');
    await privateRoot(opts.workerRoot, 'the builder root');
    for (const d of LAYOUT) await privateDir(join(opts.workerRoot, d));
    await sweepOnce(opts.workerRoot);
    await privateDir(scratch);
    const limits = { ...DEFAULT_BUILD_LIMITS, ...definedOnly(opts.limits ?? {}) };
    const allowLocalUrls = opts.allowLocalUrls === true;
    return await runBuild(req, log, { workerRoot: opts.workerRoot, signal: abort.signal, stop: onAbort, registry, scratch, started, limits, allowLocalUrls });
  } catch (err) {
    throw asBuildError(err, opts.signal?.aborted ?? false);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    registry.close();
    await rm(scratch, { recursive: true, force: true });
  }
};

interface Setup {
  workerRoot: string;
  signal: AbortSignal;
  /** Stops every step still running (after a failure elsewhere). */
  stop(): void;
  registry: BuildRegistry;
  scratch: string;
  started: number;
  limits: BuildLimits;
  allowLocalUrls: boolean;
}

async function runBuild(req: BuildRequest, log: BuildLogger, s: Setup): Promise<BuildResult> {
  if (req.tags.length === 0) throw new BuildError('no tag to push to: give at least one HOST:PORT/repo:tag', 'user');
  const targets = req.tags.map(safeRepo);
  const dockerfile = req.dockerfile || 'Dockerfile';
  const cache = new BuildCache(s.registry, BuildCache.repoFor(targets[0]!));
  const planId = createHash('sha256').update(JSON.stringify([targets[0], dockerfile, req.target ?? ''])).digest('hex').slice(0, 40);
  const { plan, context } = await planBuild(req, dockerfile, s);
  const decisions = await decide(plan, cache, { noCache: req.noCache, signal: s.signal, previous: () => cache.previousPlan(planId, s.signal) });
  for (const line of planLines(plan)) log.line(line);
  for (const step of plan.steps) log.step({ ...step });

  const pusher = new Pusher(s.registry);
  const runner = new StageRunner({
    ...{ plan, decisions, req, log, context, pusher, cache },
    signal: s.signal,
    layers: new LayerStore(s.workerRoot, s.registry),
    registry: s.registry,
    runc: needsRunc(plan, decisions) ? findRunc() : '',
    runcRoot: join(s.workerRoot, 'runc'),
    cacheRoot: join(s.workerRoot, 'cache-mounts'),
    scratch: s.scratch,
    limits: s.limits,
  });
  const result = await runStages(runner, [...decisions.keys()], plan.target, s.stop);
  await Promise.all(runner.records);
  const imageDigest = await publish(plan, result, req, targets, pusher, log);
  if (plan.steps.some((st) => st.status === 'done')) await cache.savePlan(planId, [...plan.stages.values()].flatMap((sp) => sp.steps.map((st) => st.inputs))).catch(() => undefined);
  const layerSteps = new Set([...plan.stages.values()].flatMap((sp) => sp.steps.filter((p) => p.layer).map((p) => p.step)));
  const cacheHits = plan.steps.filter((st) => st.status === 'cached' && layerSteps.has(st)).length;
  return { imageDigest, tags: req.tags, steps: plan.steps.map((st) => ({ ...st })), cacheHits, durationMs: Date.now() - s.started };
}

/** Reads a context file the build itself reads (.dockerignore), never through a link out of the context. */
const insideContext = (root: string) => async (name: string) => readFile(await contextFile(root, name), 'utf8');

/** Dockerfile → stages → the plan of the target (every key computed, nothing run). */
async function planBuild(req: BuildRequest, dockerfile: string, s: Setup): Promise<{ plan: Plan; context: BuildContext }> {
  const text = await readDockerfile(req.contextDir, dockerfile);
  const parsed = parseDockerfile(text, dockerfile);
  const stages = splitStages(parsed, dockerfile);
  const names = stages.stages.map((st) => parseFrom(st.from, stages, globalArgValues(stages, req.buildArgs)).name);
  const target = targetStage(stages, names, req.target);
  const context = new BuildContext(req.contextDir, await loadIgnore(req.contextDir, dockerfile, insideContext(req.contextDir)));
  const plan = await makePlan({ stages, req, context, resolver: new Resolver(s.registry), scratchDir: s.scratch, allowLocalUrls: s.allowLocalUrls, signal: s.signal }, target.index);
  plan.warnings.unshift(...parsed.warnings);
  return { plan, context };
}

/** The Dockerfile's text, resolved inside the context like a COPY source (a link out of it is refused, unread). */
async function readDockerfile(contextDir: string, dockerfile: string): Promise<string> {
  try {
    return await readFile(await contextFile(contextDir, dockerfile), 'utf8');
  } catch (err) {
    if (err instanceof SourceError) throw new BuildError(`cannot read the Dockerfile: ${err.message}`, 'user');
    throw err;
  }
}

/** The target's config and manifest, pushed to every tag that does not have it yet. */
async function publish(plan: Plan, result: StageResult, req: BuildRequest, targets: (RepoRef & { tag: string })[], pusher: Pusher, log: BuildLogger): Promise<string> {
  const final = plan.stages.get(plan.target)!.final;
  const cfg = configBlob(final, result.layers.map((l) => l.diffId), result.history, result.created, req.labels);
  const cfgDesc = describe(cfg, MEDIA.config);
  pusher.bytes.set(cfgDesc.digest, cfg);
  const manifest = manifestBlob(cfgDesc, result.layers.map(({ mediaType, digest, size }) => ({ mediaType, digest, size })));
  const imageDigest = describe(manifest, MEDIA.manifest).digest;
  const pushed = await Promise.all(targets.map((t) => pusher.image(t, t.tag, result.layers, cfgDesc, manifest, imageDigest)));
  log.line(pushed.some(Boolean) ? `pushed ${imageDigest} as ${req.tags.join(', ')}` : `${req.tags.join(', ')} already ${req.tags.length > 1 ? 'are' : 'is'} ${imageDigest}`);
  return imageDigest;
}

/** Starts every needed stage at once; on the first failure the others are stopped and awaited. */
async function runStages(runner: StageRunner, needed: number[], target: number, stop: () => void) {
  const all = needed.map((i) => runner.stage(i));
  try {
    await Promise.all(all);
  } catch (err) {
    stop();
    await Promise.allSettled(all);
    throw err;
  }
  return runner.stage(target);
}

function needsRunc(plan: Plan, decisions: Map<number, { firstRun: number }>): boolean {
  for (const [i, d] of decisions) {
    if (d.firstRun < 0) continue;
    if (plan.stages.get(i)!.steps.slice(d.firstRun).some((p) => p.op?.kind === 'RUN')) return true;
  }
  return false;
}

const definedOnly = <T extends object>(o: T): Partial<T> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

function safeRepo(tag: string): ReturnType<typeof repoOf> {
  try {
    return repoOf(tag);
  } catch (err) {
    throw new BuildError(`bad tag ${tag}: ${(err as Error).message}`, 'user');
  }
}

function asBuildError(err: unknown, aborted: boolean): BuildError {
  if (err instanceof BuildError) return err;
  if (aborted) return new BuildError('the build was cancelled', 'user');
  if (err instanceof DockerfileError) return new BuildError(err.message, 'user', { line: err.line });
  if (err instanceof RuncMissingError) return new BuildError(err.message, 'infrastructure');
  if (err instanceof RegistryUnavailableError) return new BuildError(err.message, 'infrastructure');
  return new BuildError((err as Error)?.message ?? String(err), 'infrastructure');
}
