/*
 * The plan: every stage the target needs, evaluated instruction by instruction without running
 * anything: variables expanded, the config each step sees, the files each COPY reads (hashed),
 * and each step's cache key. Stages are evaluated on demand from the target, so a stage nothing
 * needs is never resolved (its steps are reported as skipped).
 */
import { createHash } from 'node:crypto';
import type { BuildStep } from './types.js';
import { chainKey } from './cache.js';
import { DockerfileError } from './dockerfile/errors.js';
import { lookupIn } from './dockerfile/expand.js';
import { evaluate } from './dockerfile/instructions.js';
import { parseDockerfile, type Node } from './dockerfile/parse.js';
import { PROXY_ARGS, globalArgValues, parseFrom, type FromSpec, type StageDef } from './dockerfile/stages.js';
import { applyOp, envMap, initialState, shellOf, type StageState } from './image.js';
import { copyInputs, runInputs, type InputsHost } from './plan-inputs.js';
import type { Base, CopyFrom, Plan, PlanEnv, PlannedStep, StagePlan } from './plan-types.js';
import { isInfrastructure, type ImageBase } from './resolve.js';

export type { Base, CopyFrom, Plan, PlanEnv, PlannedStep, StagePlan } from './plan-types.js';
export { runNetwork } from './plan-inputs.js';

export async function makePlan(env: PlanEnv, target: number): Promise<Plan> {
  const planner = new Planner(env);
  await planner.stage(target);
  return planner.result(target);
}

class Planner implements InputsHost {
  private readonly memo = new Map<number, Promise<StagePlan>>();
  readonly done = new Map<number, StagePlan>();
  private readonly froms: FromSpec[];
  private readonly globals: Map<string, string>;
  private readonly consumed = new Set<string>();

  constructor(readonly env: PlanEnv) {
    this.globals = globalArgValues(env.stages, env.req.buildArgs);
    for (const n of env.stages.globalArgs) for (const w of n.args.split(/\s+/)) this.consumed.add(w.split('=')[0]!);
    this.froms = env.stages.stages.map((s) => parseFrom(s.from, env.stages, this.globals));
  }

  stage(i: number): Promise<StagePlan> {
    let p = this.memo.get(i);
    if (!p) {
      p = this.evaluate(i).then((sp) => (this.done.set(i, sp), sp));
      this.memo.set(i, p);
    }
    return p;
  }

  result(target: number): Plan {
    const { stages } = this.env.stages;
    const steps: BuildStep[] = this.env.stages.globalArgs.map((n, k) => ({ index: k + 1, stage: '', instruction: n.original, line: n.line, status: 'cached', reason: 'build argument' }));
    for (const def of stages) {
      const sp = this.done.get(def.index);
      if (sp) steps.push(...sp.steps.map((s) => s.step));
      else steps.push(...[def.from, ...def.nodes].map((n, k) => skipped(def, this.froms[def.index]!.name ?? String(def.index), n, k)));
    }
    const unusedArgs = Object.keys(this.env.req.buildArgs).filter((a) => !this.consumed.has(a) && !PROXY_ARGS.includes(a));
    return { file: this.env.stages.file, stages: this.done, target, steps, unusedArgs, warnings: [] };
  }

  fail(line: number, reason: string): never {
    throw new DockerfileError(this.env.stages.file, line, reason);
  }

  /** A stage named by FROM or --from: an earlier stage's name or index, else undefined. */
  private stageRef(name: string, current: number): number | undefined {
    const lower = name.toLowerCase();
    const byName = this.froms.findIndex((f) => f.name === lower);
    if (byName >= 0) return byName < current ? byName : this.fail(this.env.stages.stages[current]!.from.line, `stage "${name}" is used before it is defined`);
    if (/^\d+$/.test(name) && Number(name) < current) return Number(name);
    return undefined;
  }

  private async evaluate(i: number): Promise<StagePlan> {
    const def = this.env.stages.stages[i]!;
    const display = this.froms[i]!.name ?? String(i);
    const spec = this.froms[i]!;
    const { base, state, triggers, identity } = await this.base(def, spec, i);
    let key = chainKey('', ['FROM', identity]);
    const fromStep: PlannedStep = {
      step: { index: def.firstStep, stage: display, instruction: def.from.original, line: def.from.line, status: 'planned', reason: '' },
      node: def.from,
      key,
      layer: false,
      before: state,
      after: state,
      args: new Map(),
      inputs: { stage: display, position: 0, instruction: `FROM ${spec.image}`, source: identity },
    };
    const steps = [fromStep];
    let current = state;
    const args = new Map<string, string>();
    const nodes = [...triggers, ...def.nodes];
    for (const [k, node] of nodes.entries()) {
      const index = k < triggers.length ? def.firstStep : def.firstStep + 1 + k - triggers.length;
      const ps = await this.step(node, current, args, key, i, display, steps.length);
      ps.step.index = index;
      steps.push(ps);
      key = ps.key;
      current = ps.after;
    }
    return { def, display, base, steps, final: current, key };
  }

  private async base(def: StageDef, spec: FromSpec, i: number): Promise<{ base: Base; state: StageState; triggers: Node[]; identity: string }> {
    if (spec.image.toLowerCase() === 'scratch') return { base: { kind: 'scratch' }, state: initialState(), triggers: [], identity: 'scratch' };
    const j = this.stageRef(spec.image, i);
    if (j !== undefined) {
      const parent = await this.stage(j);
      return { base: { kind: 'stage', index: j }, state: initialState(parent.final.config, parent.final.author), triggers: this.triggers(parent.final.config.OnBuild, def.from), identity: `stage:${parent.key}` };
    }
    const image = await this.image(spec.image, def.from.line);
    const config = image.config;
    return { base: image, state: initialState(config.config, config.author), triggers: this.triggers(config.config.OnBuild, def.from), identity: image.manifestDigest };
  }

  private image(reference: string, line: number): Promise<ImageBase> {
    return this.env.resolver.resolve(reference, this.env.signal).catch((err: Error) => (isInfrastructure(err) ? Promise.reject(err) : this.fail(line, err.message)));
  }

  /** ONBUILD triggers of the base, run right after FROM (they name the FROM line). */
  private triggers(onbuild: string[] | null | undefined, from: Node): Node[] {
    if (!onbuild?.length) return [];
    const nodes = parseDockerfile(onbuild.join('\n'), this.env.stages.file).nodes;
    return nodes.map((n) => ({ ...n, line: from.line, endLine: from.line, original: `ONBUILD ${n.original}` }));
  }

  private async step(node: Node, before: StageState, args: Map<string, string>, parent: string, stageIndex: number, display: string, position: number): Promise<PlannedStep> {
    const ps: PlannedStep = {
      step: { index: 0, stage: display, instruction: node.original, line: node.line, status: 'planned', reason: '' },
      node,
      key: '',
      layer: false,
      before,
      after: before,
      args: new Map(args),
      inputs: { stage: display, position, instruction: node.original },
    };
    const lookup = lookupIn(envMap(before.config), args);
    const op = evaluate(node, { file: this.env.stages.file, escape: this.env.stages.escape, lookup, shell: shellOf(before) });
    ps.op = op;
    let parts: unknown[] = [node.keyword, op];
    if (op.kind === 'ARG') parts = [node.keyword, this.declareArgs(op.args, args, ps)];
    else if (op.kind === 'RUN') {
      ps.layer = true;
      parts.push(await runInputs(this, op, ps, stageIndex));
    } else if (op.kind === 'COPY' || op.kind === 'ADD') {
      ps.layer = true;
      parts.push(await copyInputs(this, op, ps, stageIndex));
    } else {
      ps.after = applyOp(before, op);
      ps.layer = op.kind === 'WORKDIR';
    }
    ps.args = new Map(args);
    ps.key = chainKey(parent, parts);
    return ps;
  }

  private declareArgs(decls: { name: string; default?: string }[], args: Map<string, string>, ps: PlannedStep): unknown[] {
    const values: [string, string | null][] = [];
    for (const a of decls) {
      this.consumed.add(a.name);
      const v = this.env.req.buildArgs[a.name] ?? a.default ?? this.globals.get(a.name);
      if (v === undefined) args.delete(a.name);
      else args.set(a.name, v);
      values.push([a.name, v ?? null]);
    }
    // The inputs are stored in the registry: values only as digests.
    ps.inputs.instruction = `ARG ${values.map(([n, v]) => (v === null ? n : `${n}=<${createHash('sha256').update(v).digest('hex').slice(0, 12)}>`)).join(' ')}`;
    return values;
  }

  async copyFrom(name: string, line: number, current: number): Promise<CopyFrom> {
    const j = this.stageRef(name, current);
    if (j !== undefined) {
      await this.stage(j);
      return { kind: 'stage', index: j };
    }
    return this.image(name, line);
  }
}

function skipped(def: StageDef, stage: string, node: Node, k: number): BuildStep {
  return { index: def.firstStep + k, stage, instruction: node.original, line: node.line, status: 'skipped', reason: 'stage not needed for the target' };
}

