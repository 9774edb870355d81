/*
 * The image config as a Dockerfile shapes it, and the documents that carry it: the OCI
 * config blob (with docker's extensions Healthcheck, Shell, OnBuild) and the OCI manifest.
 * States are values: applying an instruction returns a new state.
 */
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import type { HealthcheckOp, Op } from './dockerfile/instructions.js';
import type { ImageRunConfig } from '../runner/index.js';

export const MEDIA = {
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  config: 'application/vnd.oci.image.config.v1+json',
  layerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const;

export const DEFAULT_SHELL = ['/bin/sh', '-c'];

/** The image config's `config`: what the runner reads, plus the build-only fields. */
export interface ContainerConfig extends Omit<ImageRunConfig, 'Healthcheck'> {
  Healthcheck?: { Test: string[]; Interval?: number; Timeout?: number; StartPeriod?: number; StartInterval?: number; Retries?: number };
  Shell?: string[];
  OnBuild?: string[] | null;
}

export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

export interface ImageConfigFile {
  created?: string;
  author?: string;
  architecture: string;
  os: string;
  config: ContainerConfig;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: HistoryEntry[];
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** The config of a stage at one point of its Dockerfile. */
export interface StageState {
  config: ContainerConfig;
  author?: string;
  /** CMD was set in this stage (ENTRYPOINT then keeps it). */
  cmdSet: boolean;
}

export function initialState(config: ContainerConfig = {}, author?: string): StageState {
  // ONBUILD triggers run in the child once; they are not inherited further.
  const { OnBuild: _onbuild, ...rest } = structuredClone(config);
  return { config: rest, cmdSet: false, ...(author ? { author } : {}) };
}

export const shellOf = (s: StageState): string[] => s.config.Shell ?? DEFAULT_SHELL;

export function envMap(config: ContainerConfig): Map<string, string> {
  const m = new Map<string, string>();
  for (const e of config.Env ?? []) {
    const i = e.indexOf('=');
    m.set(i < 0 ? e : e.slice(0, i), i < 0 ? '' : e.slice(i + 1));
  }
  return m;
}

/** Sets `key` in a KEY=VALUE list, in place of an earlier value. */
export function setEnv(env: string[] | undefined, key: string, value: string): string[] {
  const list = [...(env ?? [])];
  const i = list.findIndex((e) => e === key || e.startsWith(`${key}=`));
  if (i >= 0) list[i] = `${key}=${value}`;
  else list.push(`${key}=${value}`);
  return list;
}

/** The state after a metadata instruction (RUN, COPY, ADD, ARG leave the config as it is). */
export function applyOp(state: StageState, op: Op): StageState {
  const s: StageState = { ...state, config: { ...state.config } };
  const c = s.config;
  switch (op.kind) {
    case 'ENV':
      for (const [k, v] of op.pairs) c.Env = setEnv(c.Env, k, v);
      break;
    case 'LABEL':
      c.Labels = { ...(c.Labels ?? {}), ...Object.fromEntries(op.pairs) };
      break;
    case 'EXPOSE':
      c.ExposedPorts = { ...(c.ExposedPorts ?? {}), ...Object.fromEntries(op.ports.map((p) => [p, {}])) };
      break;
    case 'VOLUME':
      c.Volumes = { ...(c.Volumes ?? {}), ...Object.fromEntries(op.paths.map((p) => [p, {}])) };
      break;
    case 'WORKDIR':
      c.WorkingDir = posix.resolve(c.WorkingDir || '/', op.value);
      break;
    case 'USER':
      c.User = op.value;
      break;
    case 'STOPSIGNAL':
      c.StopSignal = op.value;
      break;
    case 'MAINTAINER':
      s.author = op.value;
      break;
    case 'CMD':
      c.Cmd = op.argv;
      s.cmdSet = true;
      break;
    case 'ENTRYPOINT':
      c.Entrypoint = op.argv;
      if (!s.cmdSet) c.Cmd = null;
      break;
    case 'SHELL':
      c.Shell = op.argv;
      break;
    case 'HEALTHCHECK':
      c.Healthcheck = healthConfig(op.health);
      break;
    case 'ONBUILD':
      c.OnBuild = [...(c.OnBuild ?? []), op.trigger];
      break;
    default:
      break;
  }
  return s;
}

function healthConfig(h: HealthcheckOp): NonNullable<ContainerConfig['Healthcheck']> {
  return {
    Test: h.test,
    ...(h.interval ? { Interval: h.interval } : {}),
    ...(h.timeout ? { Timeout: h.timeout } : {}),
    ...(h.startPeriod ? { StartPeriod: h.startPeriod } : {}),
    ...(h.startInterval ? { StartInterval: h.startInterval } : {}),
    ...(h.retries ? { Retries: h.retries } : {}),
  };
}

/** The config blob: fields in a fixed order, so equal inputs give equal bytes. */
export function configBlob(state: StageState, diffIds: string[], history: HistoryEntry[], created: string | undefined, labels: Record<string, string> = {}): Buffer {
  const config: ContainerConfig = { ...state.config };
  if (Object.keys(labels).length) config.Labels = { ...(config.Labels ?? {}), ...labels };
  const doc: ImageConfigFile = {
    ...(created ? { created } : {}),
    ...(state.author ? { author: state.author } : {}),
    architecture: 'amd64',
    os: 'linux',
    config,
    rootfs: { type: 'layers', diff_ids: diffIds },
    history,
  };
  return Buffer.from(JSON.stringify(doc));
}

export function manifestBlob(config: Descriptor, layers: Descriptor[], annotations?: Record<string, string>): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.manifest, config, layers, ...(annotations ? { annotations } : {}) }));
}

export function describe(bytes: Buffer, mediaType: string): Descriptor {
  return { mediaType, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}`, size: bytes.length };
}
