/*
 * Which steps are cached and which must run, decided before anything runs. Per stage, the
 * last layer step is looked up first: a hit there covers the whole stage (its record holds
 * every layer so far), which is the no-op rebuild's single request. Otherwise all layer steps
 * are looked up at once and the stage resumes after the last hit. A stage is needed only if a
 * step that runs reads it (COPY --from, RUN --mount from=) or it is the base of a stage that
 * has no hit; the others are reported as skipped.
 */
import type { BuildStep } from './types.js';
import { explainMiss, type BuildCache, type CacheRecord, type StepInputs } from './cache.js';
import type { Plan, StagePlan } from './plan.js';

export interface StageDecision {
  /** Index into the stage's steps of the last cached layer step, or -1. */
  lastHit: number;
  record?: CacheRecord;
  /** Index of the first step that runs, or -1 when none does. */
  firstRun: number;
}

export interface DecideOptions {
  noCache: boolean;
  signal?: AbortSignal;
  previous: () => Promise<StepInputs[] | undefined>;
}

export async function decide(plan: Plan, cache: BuildCache, o: DecideOptions): Promise<Map<number, StageDecision>> {
  const decisions = new Map<number, Promise<StageDecision>>();
  const need = (i: number): Promise<StageDecision> => {
    let p = decisions.get(i);
    if (!p) {
      p = decideStage(plan.stages.get(i)!, cache, o).then(async (d) => {
        await Promise.all(dependencies(plan.stages.get(i)!, d).map(need));
        return d;
      });
      decisions.set(i, p);
    }
    return p;
  };
  await need(plan.target);
  const out = new Map<number, StageDecision>();
  for (const [i, p] of decisions) out.set(i, await p);
  await label(plan, out, o);
  return out;
}

async function decideStage(sp: StagePlan, cache: BuildCache, o: DecideOptions): Promise<StageDecision> {
  const layered = sp.steps.flatMap((s, k) => (s.layer ? [k] : []));
  let lastHit = -1;
  let record: CacheRecord | undefined;
  if (!o.noCache && layered.length) {
    const last = layered.at(-1)!;
    record = await cache.lookup(sp.steps[last]!.key, o.signal);
    if (record) lastHit = last;
    else {
      const found = await Promise.all(layered.slice(0, -1).map((k) => cache.lookup(sp.steps[k]!.key, o.signal)));
      for (let j = found.length - 1; j >= 0; j--) {
        if (found[j]) {
          lastHit = layered[j]!;
          record = found[j];
          break;
        }
      }
    }
  }
  const firstRun = layered.find((k) => k > lastHit) ?? -1;
  return { lastHit, firstRun, ...(record ? { record } : {}) };
}

function dependencies(sp: StagePlan, d: StageDecision): number[] {
  const deps = new Set<number>();
  if (d.lastHit < 0 && sp.base.kind === 'stage') deps.add(sp.base.index);
  if (d.firstRun >= 0) for (const s of sp.steps.slice(d.firstRun)) if (s.from?.kind === 'stage') deps.add(s.from.index);
  return [...deps];
}

/** Sets each step's status and reason. */
async function label(plan: Plan, decisions: Map<number, StageDecision>, o: DecideOptions): Promise<void> {
  const running = [...decisions.values()].some((d) => d.firstRun >= 0);
  const previous = running && !o.noCache ? await o.previous() : undefined;
  const inputs = [...plan.stages.values()].flatMap((sp) => sp.steps.map((s) => s.inputs));
  for (const [i, sp] of plan.stages) {
    const d = decisions.get(i);
    for (const [k, ps] of sp.steps.entries()) ps.step.reason = reason(sp, k, d, inputs, previous, o.noCache);
    for (const [k, ps] of sp.steps.entries()) ps.step.status = !d ? 'skipped' : d.firstRun >= 0 && k >= d.firstRun ? 'planned' : 'cached';
  }
}

function reason(sp: StagePlan, k: number, d: StageDecision | undefined, inputs: StepInputs[], previous: StepInputs[] | undefined, noCache: boolean): string {
  if (!d) return 'not needed: the steps that read this stage are cached';
  const ps = sp.steps[k]!;
  const runs = d.firstRun >= 0 && k >= d.firstRun;
  if (k === 0) return sp.base.kind === 'image' ? `image ${sp.base.manifestDigest}` : sp.base.kind === 'stage' ? `stage ${sp.base.index}` : 'empty filesystem';
  if (!runs) return k <= d.lastHit ? 'cache hit' : 'config only';
  if (!ps.layer) return 'config only';
  if (k > d.firstRun) return `after step #${sp.steps[d.firstRun]!.step.index}, which runs`;
  return noCache ? '--no-cache' : explainMiss(inputs, previous, sp.display, k);
}

/** The plan as the build log shows it, one line per step. */
export function planLines(plan: Plan): string[] {
  const steps: BuildStep[] = plan.steps;
  const counted = steps.filter((s) => s.status !== 'skipped');
  const runs = counted.filter((s) => s.status === 'planned').length;
  const lines = plan.warnings.map((w) => `warning: ${w}`);
  lines.push(`plan: ${counted.length} steps, ${counted.length - runs} cached, ${runs} to run${plan.unusedArgs.length ? `; build args not used: ${plan.unusedArgs.join(', ')}` : ''}`);
  for (const s of steps) {
    const where = s.stage === '' ? '' : `[${s.stage}] `;
    const what = s.status === 'planned' ? 'RUN   ' : s.status === 'cached' ? 'CACHED' : 'SKIP  ';
    lines.push(`#${s.index} ${what} ${where}${oneLine(s.instruction)}  (${s.reason})`);
  }
  return lines;
}

const oneLine = (text: string): string => (text.length > 100 ? `${text.slice(0, 97)}...` : text);
