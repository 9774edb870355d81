/*
 * The bodies of the steps that work on a filesystem, each on a rootfs the executor mounted
 * (an overlay of the parent layers) and, for COPY --from / RUN --mount from=, a second one
 * mounted read-only-in-spirit: RUN under runc, COPY/ADD by copying, WORKDIR by mkdir.
 */
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveUser, secureJoin } from '../runner/index.js';
import { BuildError, type BuildLimits, type BuildLogger, type BuildRequest } from './types.js';
import type { BuildCache } from './cache.js';
import type { BuildContext, ResolvedSource } from './context.js';
import { copyInto } from './copy.js';
import type { StageDecision } from './decide.js';
import type { Op } from './dockerfile/instructions.js';
import { PROXY_ARGS } from './dockerfile/stages.js';
import type { HistoryEntry } from './image.js';
import type { LayerRef, LayerStore } from './layers.js';
import { runNetwork, type Plan, type PlannedStep } from './plan.js';
import type { Pusher } from './push.js';
import type { BuildRegistry } from './registry.js';
import { resolveInRootfs } from './rootfs-source.js';
import { prepareMounts } from './run-mounts.js';
import { missingMountPoints, runInRootfs, type RunOutcome } from './run.js';

export interface StageResult {
  layers: LayerRef[];
  history: HistoryEntry[];
  created?: string;
}

export interface ExecEnv {
  plan: Plan;
  decisions: Map<number, StageDecision>;
  req: BuildRequest;
  log: BuildLogger;
  signal: AbortSignal;
  context: BuildContext;
  layers: LayerStore;
  pusher: Pusher;
  cache: BuildCache;
  registry: BuildRegistry;
  runc: string;
  runcRoot: string;
  cacheRoot: string;
  scratch: string;
  limits: BuildLimits;
}

/** Another stage's or image's filesystem, mounted for a step to read. */
export interface MountedFrom {
  rootfs: string;
  what: string;
  unmount(): Promise<void>;
}

export interface StepContext {
  env: ExecEnv;
  ps: PlannedStep;
  rootfs: string;
  work: string;
  from?: MountedFrom;
}

/** RUN: returns the mount points runc had to create (to be removed from the layer). */
export async function runStep(s: StepContext, op: Extract<Op, { kind: 'RUN' }>): Promise<string[]> {
  const { env, ps, rootfs, from } = s;
  const scratch = join(s.work, 'bundle');
  await mkdir(scratch);
  try {
    const prepared = await prepareMounts(op.mounts, { cacheRoot: env.cacheRoot, scratch, secrets: env.req.secrets, bindRoot: from?.rootfs ?? env.context.root, ...(op.script ? { script: op.script } : {}) });
    try {
      const missing = await missingMountPoints(rootfs, prepared.mounts);
      const cfg = ps.before.config;
      const out = await runInRootfs({
        id: `build-${randomBytes(8).toString('hex')}`,
        runc: env.runc,
        runcRoot: env.runcRoot,
        bundle: scratch,
        rootfs,
        argv: [...prepared.argvPrefix, ...op.argv],
        env: [...runArgs(ps, env.req), ...(cfg.Env ?? []), ...prepared.env],
        user: cfg.User ?? '',
        workdir: cfg.WorkingDir ?? '/',
        network: runNetwork(op, env.req),
        mounts: prepared.mounts,
        limits: env.limits,
        signal: env.signal,
        onLine: (line) => env.log.line(`#${ps.step.index} ${line}`),
      });
      checkOutcome(out, ps, env);
      return missing;
    } finally {
      prepared.release();
    }
  } finally {
    await rm(scratch, { recursive: true, force: true }); // secret files and the spec with secret env values
  }
}

/** Build args as RUN sees them: the proxies always, the others once declared (ENV wins over both). */
function runArgs(ps: PlannedStep, req: BuildRequest): string[] {
  const proxies = PROXY_ARGS.flatMap((k) => (req.buildArgs[k] !== undefined ? [`${k}=${req.buildArgs[k]}`] : []));
  return [...proxies, ...[...ps.args].map(([k, v]) => `${k}=${v}`)];
}

function checkOutcome(out: RunOutcome, ps: PlannedStep, env: ExecEnv): void {
  const detail = { exitCode: out.exitCode, line: ps.node.line, lastLines: out.lastLines };
  const at = `${env.plan.file}:${ps.node.line}`;
  if (env.signal.aborted) throw new BuildError('the build was cancelled', 'user');
  if (out.startError) throw new BuildError(`${at}: RUN could not start: ${out.startError}`, 'user', detail);
  if (out.exitCode !== 0) throw new BuildError(`${at}: RUN ${oneLine(ps.node.args)} exited with code ${out.exitCode}`, 'user', detail);
}

export async function copyStep(s: StepContext, op: Extract<Op, { kind: 'COPY' | 'ADD' }>): Promise<void> {
  const { ps, rootfs, from } = s;
  const owner = op.chown !== undefined ? await chownOwner(rootfs, op.chown) : undefined;
  let sources: ResolvedSource[] = ps.sources ?? [];
  if (from) {
    sources = [];
    for (const spec of op.sources) sources.push(...(await resolveInRootfs(from.rootfs, spec, op.exclude, from.what)));
  }
  await copyInto({
    rootfs,
    kind: op.kind,
    dest: op.dest,
    workdir: ps.before.config.WorkingDir ?? '/',
    sources,
    inline: op.inline,
    urls: ps.urls ?? [],
    fromContext: !from,
    ...(owner ? { owner } : {}),
    ...(op.chmod !== undefined ? { chmod: op.chmod } : {}),
    scratch: s.work,
  });
}

/** WORKDIR creates its directory (root's, 0755) when the parent lacks it; false when it existed. */
export async function makeWorkdir(rootfs: string, dir: string): Promise<boolean> {
  const path = await secureJoin(rootfs, dir);
  if (await lstat(path).catch(() => null)) return false;
  await mkdir(path, { recursive: true, mode: 0o755 });
  return true;
}

/** --chown=user[:group]: names from the rootfs; without a group the gid is the uid (docker's rule for COPY). */
async function chownOwner(rootfs: string, spec: string): Promise<{ uid: number; gid: number }> {
  const u = await resolveUser(rootfs, spec);
  return spec.includes(':') ? { uid: u.uid, gid: u.gid } : { uid: u.uid, gid: u.uid };
}

const oneLine = (s: string): string => (s.length > 80 ? `${s.slice(0, 77)}...` : s).replace(/\n/g, ' ');
