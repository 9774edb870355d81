/** The plan's shapes, shared by the planner, the cache decisions and the executor. */
import type { BuildRequest, BuildStep } from './types.js';
import type { StepInputs } from './cache.js';
import type { BuildContext, ResolvedSource } from './context.js';
import type { Op } from './dockerfile/instructions.js';
import type { Node } from './dockerfile/parse.js';
import type { StageDef, Stages } from './dockerfile/stages.js';
import type { FetchedUrl } from './fetch.js';
import type { StageState } from './image.js';
import type { ImageBase, Resolver } from './resolve.js';

export type Base = { kind: 'scratch' } | ImageBase | { kind: 'stage'; index: number };
export type CopyFrom = { kind: 'stage'; index: number } | ImageBase;

export interface PlannedStep {
  step: BuildStep;
  node: Node;
  op?: Op;
  key: string;
  /**
   * The step works on the filesystem (RUN, COPY, ADD, and WORKDIR, which creates its
   * directory when missing): it is executed or taken from the cache, and may add a layer.
   */
  layer: boolean;
  before: StageState;
  after: StageState;
  /** Build args in scope (RUN sees them as environment variables). */
  args: Map<string, string>;
  inputs: StepInputs;
  sources?: ResolvedSource[];
  urls?: FetchedUrl[];
  /** COPY --from, or the `from=` of RUN --mount=type=bind. */
  from?: CopyFrom;
}

export interface StagePlan {
  def: StageDef;
  display: string;
  base: Base;
  steps: PlannedStep[];
  final: StageState;
  key: string;
}

export interface Plan {
  /** The Dockerfile's name as errors show it. */
  file: string;
  stages: Map<number, StagePlan>;
  target: number;
  /** Every step of the Dockerfile, in order (global ARGs and unneeded stages included). */
  steps: BuildStep[];
  unusedArgs: string[];
  /** Parser warnings, printed with the plan. */
  warnings: string[];
}

export interface PlanEnv {
  stages: Stages;
  req: BuildRequest;
  context: BuildContext;
  resolver: Resolver;
  scratchDir: string;
  /** ADD <url> may reach loopback, link-local and the worker's own addresses (fetch.ts). */
  allowLocalUrls: boolean;
  signal?: AbortSignal;
}
