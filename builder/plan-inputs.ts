/*
 * What RUN, COPY and ADD read, found at planning time: context files (resolved and hashed),
 * URLs (fetched and hashed), other stages (their keys) and images (their manifest digests).
 * The result is part of the step's cache key.
 */
import type { BuildRequest } from './types.js';
import { SourceError, digestSources, type ResolvedSource } from './context.js';
import type { Op } from './dockerfile/instructions.js';
import type { Node } from './dockerfile/parse.js';
import { fetchUrl, isUrl } from './fetch.js';
import type { CopyFrom, PlanEnv, PlannedStep, StagePlan } from './plan-types.js';

/** The planner, as the input readers see it. */
export interface InputsHost {
  env: PlanEnv;
  done: Map<number, StagePlan>;
  fail(line: number, reason: string): never;
  copyFrom(name: string, line: number, current: number): Promise<CopyFrom>;
}

export async function runInputs(h: InputsHost, op: Extract<Op, { kind: 'RUN' }>, ps: PlannedStep, stageIndex: number): Promise<unknown> {
  const binds: unknown[] = [];
  for (const m of op.mounts) {
    if (m.type !== 'bind') continue;
    if (m.from) {
      ps.from = await h.copyFrom(m.from, ps.node.line, stageIndex);
      binds.push(fromIdentity(ps.from, h.done));
    } else {
      ps.sources = await contextSources(h, ps.node, [m.source], []);
      const d = await digestSources(ps.sources);
      ps.inputs.files = d.files;
      binds.push(d.digest);
    }
  }
  if (op.network === 'host' && h.env.req.network !== 'host') h.fail(ps.node.line, 'RUN --network=host needs a build started with --network host');
  return [runNetwork(op, h.env.req), binds];
}

export async function copyInputs(h: InputsHost, op: Extract<Op, { kind: 'COPY' | 'ADD' }>, ps: PlannedStep, stageIndex: number): Promise<unknown> {
  if (op.from !== undefined) {
    ps.from = await h.copyFrom(op.from, ps.node.line, stageIndex);
    ps.inputs.source = fromIdentity(ps.from, h.done);
    return ps.inputs.source;
  }
  const urls = op.kind === 'ADD' ? op.sources.filter(isUrl) : [];
  const local = op.sources.filter((s) => !urls.includes(s));
  ps.urls = await Promise.all(urls.map((u) => fetchUrl(u, h.env.scratchDir, { allowLocal: h.env.allowLocalUrls || h.env.req.network === 'host', signal: h.env.signal }).catch((err: Error) => h.fail(ps.node.line, `ADD failed: ${err.message}`))));
  for (const u of ps.urls) if (op.checksum && u.digest !== op.checksum) h.fail(ps.node.line, `ADD failed: ${u.url} has digest ${u.digest}, not the --checksum ${op.checksum}`);
  ps.sources = await contextSources(h, ps.node, local, op.exclude);
  const d = await digestSources(ps.sources);
  if (Object.keys(d.files).length) ps.inputs.files = d.files;
  if (ps.urls.length) ps.inputs.source = ps.urls.map((u) => u.digest).join(',');
  return [d.digest, ps.urls.map((u) => [u.url, u.digest, u.mtimeMs ?? null])];
}

async function contextSources(h: InputsHost, node: Node, specs: string[], exclude: string[]): Promise<ResolvedSource[]> {
  const out: ResolvedSource[] = [];
  for (const spec of specs) {
    try {
      out.push(...(await h.env.context.resolve(spec, exclude)));
    } catch (err) {
      if (err instanceof SourceError) h.fail(node.line, `${node.keyword} failed: ${err.message}`);
      throw err;
    }
  }
  return out;
}

/** Host networking only when the build was started with it (and the step does not opt out). */
export function runNetwork(op: Extract<Op, { kind: 'RUN' }>, req: BuildRequest): 'none' | 'host' {
  return req.network === 'host' && op.network !== 'none' ? 'host' : 'none';
}

export function fromIdentity(from: CopyFrom, done: Map<number, StagePlan>): string {
  return from.kind === 'stage' ? `stage:${done.get(from.index)!.key}` : from.manifestDigest;
}
