/*
 * The build cache, kept in the registry so every worker on every machine shares it.
 *
 *   <registry>/slipway-cache/<repo>:<key>        one record per layer step: the image as it is
 *                                                after that step (OCI manifest + config), so the
 *                                                layers stay referenced and a worker can unpack it
 *   <registry>/slipway-cache/<repo>:plan-<id>    the inputs of the last build of a tag, to say
 *                                                why a step misses the cache next time
 *
 * A step's key is sha256 over the parent step's key, the instruction with its variables
 * expanded, and the digests of what it reads (context files, a URL's bytes, another stage's
 * key, a base image's manifest digest). Metadata instructions (ENV, WORKDIR, ARG values, …)
 * are links of the chain too, so changing one re-runs what follows, as in docker.
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { type ImageConfigFile, type Descriptor, describe, manifestBlob } from './image.js';
import type { BuildRegistry, ImageManifest, RepoRef } from './registry.js';

const KEY_VERSION = 'slipway-build-1';
const PLAN_MEDIA = 'application/vnd.slipway.build.plan.v1+json';

export function chainKey(parent: string, parts: unknown): string {
  return createHash('sha256').update(JSON.stringify([KEY_VERSION, parent, parts])).digest('hex');
}

/** What one step's key was made of, kept to explain a miss in a later build. */
export interface StepInputs {
  stage: string;
  /** Position inside the stage (0 = FROM). */
  position: number;
  instruction: string;
  /** Base image digest, other stage's key or URL digest this step reads. */
  source?: string;
  /** Context files read: path → sha256. */
  files?: Record<string, string>;
}

export interface CacheRecord {
  manifestDigest: string;
  manifest: ImageManifest;
  config: ImageConfigFile;
}

export class BuildCache {
  constructor(
    private readonly registry: BuildRegistry,
    readonly repo: RepoRef,
  ) {}

  static repoFor(target: RepoRef): RepoRef {
    return { registry: target.registry, repository: `slipway-cache/${target.repository}` };
  }

  /** The record of `key`, or undefined on a miss. */
  async lookup(key: string, signal?: AbortSignal): Promise<CacheRecord | undefined> {
    const found = await this.registry.resolve({ ...this.repo, tag: key }, signal);
    if (!found) return undefined;
    const bytes = await this.registry.config(this.repo, found.manifest.config, signal);
    return { manifestDigest: found.manifestDigest, manifest: found.manifest, config: JSON.parse(bytes.toString()) as ImageConfigFile };
  }

  /** Tags an image (its blobs already in the cache repository) as the record of `key`. */
  async store(key: string, manifest: Buffer): Promise<void> {
    await this.registry.putManifest(this.repo, key, manifest);
  }

  async previousPlan(id: string, signal?: AbortSignal): Promise<StepInputs[] | undefined> {
    try {
      const found = await this.registry.resolve({ ...this.repo, tag: `plan-${id}` }, signal);
      if (!found) return undefined;
      const bytes = await this.registry.config(this.repo, found.manifest.config, signal);
      return (JSON.parse(bytes.toString()) as { steps: StepInputs[] }).steps;
    } catch {
      return undefined; // only an explanation is lost
    }
  }

  async savePlan(id: string, steps: StepInputs[]): Promise<void> {
    const blob = Buffer.from(JSON.stringify({ steps }));
    const desc: Descriptor = describe(blob, PLAN_MEDIA);
    if (!(await this.registry.hasBlob(this.repo, desc.digest))) await this.registry.upload(this.repo, desc, () => bufferStream(blob));
    await this.registry.putManifest(this.repo, `plan-${id}`, manifestBlob(desc, []));
  }
}

const bufferStream = (b: Buffer): Readable => Readable.from([b]);

/** Why step `position` of `stage` misses, comparing this build's inputs with the last one's. */
export function explainMiss(current: StepInputs[], previous: StepInputs[] | undefined, stage: string, upTo: number): string {
  if (!previous) return 'not in the cache (no earlier build of this tag)';
  const before = new Map(previous.filter((p) => p.stage === stage).map((p) => [p.position, p]));
  for (const cur of current.filter((c) => c.stage === stage && c.position <= upTo)) {
    const old = before.get(cur.position);
    if (!old) return `${cur.instruction.split(/\s/, 1)[0]} at this position is new`;
    if (old.instruction !== cur.instruction) return cur.position === 0 ? `base changed: ${cur.instruction}` : `instruction changed: ${cur.instruction}`;
    if ((old.source ?? '') !== (cur.source ?? '')) return cur.position === 0 ? `base image changed (now ${short(cur.source)})` : `input changed: ${cur.instruction} (now ${short(cur.source)})`;
    const files = changedFiles(old.files ?? {}, cur.files ?? {});
    if (files) return files;
  }
  return 'not in the cache';
}

function changedFiles(old: Record<string, string>, cur: Record<string, string>): string | undefined {
  const names = [...new Set([...Object.keys(old), ...Object.keys(cur)])].filter((n) => old[n] !== cur[n]).sort();
  if (names.length === 0) return undefined;
  const shown = names.slice(0, 3).join(', ');
  const more = names.length > 3 ? ` and ${names.length - 3} more` : '';
  return `context file${names.length > 1 ? 's' : ''} ${shown}${more} changed`;
}

const short = (digest: string | undefined): string => (digest ? digest.replace(/^(sha256:)?([a-f0-9]{12})[a-f0-9]*$/, '$1$2') : 'none');
