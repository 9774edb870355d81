/*
 * Running the plan: each needed stage from its last cache hit (or its base) to its end. A
 * stage waits for another only where it reads it, so independent stages run in parallel.
 * A layer step mounts an overlay of the parent layers, runs or copies, turns the upper dir
 * into a layer, keeps the directory as this worker's unpacked copy, and records the step in
 * the registry cache in the background (the final push waits for those records).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { mountRootfs, unmountRootfs, BadOptionError } from '../runner/index.js';
import { BuildError } from './types.js';
import { SourceError } from './context.js';
import { DockerfileError } from './dockerfile/errors.js';
import { MEDIA, configBlob, describe, manifestBlob, type HistoryEntry } from './image.js';
import { writeLayer } from './layer.js';
import type { LayerRef } from './layers.js';
import type { StageDecision } from './decide.js';
import type { CopyFrom, Plan, PlannedStep, StagePlan } from './plan.js';
import type { ImageBase } from './resolve.js';
import { SecretMissingError, removeMountPoints } from './run-mounts.js';
import { copyStep, makeWorkdir, runStep, type ExecEnv, type MountedFrom, type StageResult } from './steps.js';

export type { ExecEnv, StageResult } from './steps.js';

export class StageRunner {
  private readonly memo = new Map<number, Promise<StageResult>>();
  /** Cache records being written; the final push waits for them. */
  readonly records: Promise<void>[] = [];

  constructor(private readonly env: ExecEnv) {}

  stage(i: number): Promise<StageResult> {
    let p = this.memo.get(i);
    if (!p) {
      p = this.run(this.env.plan.stages.get(i)!, this.env.decisions.get(i)!);
      p.catch(() => undefined);
      this.memo.set(i, p);
    }
    return p;
  }

  private async run(sp: StagePlan, d: StageDecision): Promise<StageResult> {
    let state = await this.start(sp, d);
    this.mark(sp.steps[0]!, 'done');
    for (const [k, ps] of sp.steps.entries()) {
      if (k === 0 || k <= d.lastHit) continue;
      if (this.env.signal.aborted) throw new BuildError('the build was cancelled', 'user');
      if (!ps.layer) {
        if (ps.op?.kind !== 'ARG') state = { ...state, history: [...state.history, { ...(state.created ? { created: state.created } : {}), created_by: ps.node.original, empty_layer: true }] };
        this.mark(ps, 'done');
        continue;
      }
      state = await this.layerStep(sp, ps, state);
    }
    return state;
  }

  private async start(sp: StagePlan, d: StageDecision): Promise<StageResult> {
    if (d.record) {
      const cfg = d.record.config;
      const layers = d.record.manifest.layers.map((l, k) => ({ ...l, diffId: cfg.rootfs.diff_ids[k]!, source: this.env.cache.repo }));
      return { layers, history: cfg.history ?? [], ...(cfg.created ? { created: cfg.created } : {}) };
    }
    const base = sp.base;
    if (base.kind === 'scratch') return { layers: [], history: [] };
    if (base.kind === 'stage') return this.stage(base.index);
    return { layers: imageLayers(base), history: base.config.history ?? [], ...(base.config.created ? { created: base.config.created } : {}) };
  }

  private mark(ps: PlannedStep, status: 'running' | 'done' | 'failed', extra: { durationMs?: number; layerDigest?: string } = {}): void {
    if (ps.step.status === 'cached' || ps.step.status === 'skipped') return;
    Object.assign(ps.step, { status }, extra);
    this.env.log.step({ ...ps.step });
  }

  private async layerStep(sp: StagePlan, ps: PlannedStep, state: StageResult): Promise<StageResult> {
    const started = Date.now();
    this.mark(ps, 'running');
    this.env.log.line(`#${ps.step.index} [${sp.display}] ${ps.node.original}`);
    try {
      const layer = await this.makeLayer(ps, state);
      const created = layer ? new Date().toISOString() : state.created;
      const entry: HistoryEntry = { ...(created ? { created } : {}), created_by: ps.node.original, ...(layer ? {} : { empty_layer: true }) };
      const next: StageResult = { layers: layer ? [...state.layers, layer] : state.layers, history: [...state.history, entry], ...(created ? { created } : {}) };
      this.records.push(this.record(ps, next));
      this.mark(ps, 'done', { durationMs: Date.now() - started, ...(layer ? { layerDigest: layer.digest } : {}) });
      return next;
    } catch (err) {
      this.mark(ps, 'failed', { durationMs: Date.now() - started });
      throw stepError(err, ps, this.env.plan);
    }
  }

  /** Runs the step over the parent layers; undefined when it changed nothing (an existing WORKDIR). */
  private async makeLayer(ps: PlannedStep, state: StageResult): Promise<LayerRef | undefined> {
    const dirs = await Promise.all(state.layers.map((l) => this.env.layers.ensure(l, this.env.signal)));
    const work = this.env.layers.tmpDir();
    await mkdir(work, { recursive: true, mode: 0o700 });
    try {
      const mounted = await mountRootfs(dirs, work);
      let created: string[] = [];
      const from = ps.from ? await this.mountFrom(ps.from, work).catch(async (err: unknown) => {
        await unmountRootfs(mounted.rootfs);
        throw err;
      }) : undefined;
      try {
        const op = ps.op!;
        const step = { env: this.env, ps, rootfs: mounted.rootfs, work, ...(from ? { from } : {}) };
        if (op.kind === 'RUN') created = await runStep(step, op);
        else if (op.kind === 'COPY' || op.kind === 'ADD') await copyStep(step, op);
        else if (!(await makeWorkdir(mounted.rootfs, ps.after.config.WorkingDir ?? '/'))) return undefined;
      } finally {
        await from?.unmount();
        await unmountRootfs(mounted.rootfs);
      }
      await removeMountPoints(mounted.upper, created);
      const blobPath = join(this.env.scratch, `layer-${randomBytes(8).toString('hex')}`);
      const built = await writeLayer(mounted.upper, blobPath);
      await this.env.layers.adopt(mounted.upper, built);
      this.env.pusher.files.set(built.digest, blobPath);
      return { mediaType: built.mediaType, digest: built.digest, size: built.size, diffId: built.diffId, source: this.env.cache.repo };
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** The filesystem of a stage or image, mounted for reading. */
  private async mountFrom(from: CopyFrom, work: string): Promise<MountedFrom> {
    const layers = from.kind === 'stage' ? (await this.stage(from.index)).layers : imageLayers(from);
    const dirs = await Promise.all(layers.map((l) => this.env.layers.ensure(l, this.env.signal)));
    const dir = join(work, 'from');
    const m = await mountRootfs(dirs, dir);
    const what = from.kind === 'stage' ? `stage ${this.env.plan.stages.get(from.index)!.display}` : from.reference;
    return { rootfs: m.rootfs, what, unmount: () => unmountRootfs(m.rootfs) };
  }

  /** Writes the cache record of a step: the image as it is after it. Failing only warns. */
  private async record(ps: PlannedStep, result: StageResult): Promise<void> {
    const { pusher, cache, registry } = this.env;
    try {
      const cfg = configBlob(ps.after, result.layers.map((l) => l.diffId), result.history, result.created);
      const desc = describe(cfg, MEDIA.config);
      pusher.bytes.set(desc.digest, cfg);
      await registry.keep(desc.digest, cfg);
      await Promise.all([...result.layers.map((l) => pusher.ensure(cache.repo, l, l.source)), pusher.ensure(cache.repo, desc)]);
      await cache.store(ps.key, manifestBlob(desc, result.layers.map(({ mediaType, digest, size }) => ({ mediaType, digest, size }))));
    } catch (err) {
      this.env.log.line(`warning: step #${ps.step.index} was not recorded in the build cache: ${(err as Error).message}`);
    }
  }
}

/** Docker's layer types name the same bytes as OCI's; the images this builder writes are OCI. */
const OCI_LAYER: Record<string, string> = {
  'application/vnd.docker.image.rootfs.diff.tar.gzip': MEDIA.layerGzip,
  'application/vnd.docker.image.rootfs.diff.tar': 'application/vnd.oci.image.layer.v1.tar',
};

export function imageLayers(image: ImageBase): LayerRef[] {
  return image.manifest.layers.map((l, k) => ({ mediaType: OCI_LAYER[l.mediaType] ?? l.mediaType, digest: l.digest, size: l.size, diffId: image.config.rootfs.diff_ids[k]!, source: image.repo }));
}


/** User mistakes found while running a step name its line; everything else passes as it is. */
function stepError(err: unknown, ps: PlannedStep, plan: Plan): unknown {
  if (err instanceof BuildError || err instanceof DockerfileError) return err;
  if (err instanceof SourceError || err instanceof BadOptionError || err instanceof SecretMissingError) {
    return new DockerfileError(plan.file, ps.node.line, `${ps.node.keyword} failed: ${(err as Error).message}`);
  }
  return err;
}
