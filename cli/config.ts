import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { BodyLimits } from '../registry/index.js';

/** Settings of `slipway registry`; from flags, then SLIPWAY_* variables, then the YAML file, then defaults. */
export interface RegistryConfig {
  listen: string;
  data: string;
  /**
   * Where to store, when not the filesystem at `data` (and then `data` is unused):
   * `s3://HOST:PORT/BUCKET?…`, `file:///dir`, or in YAML also `{ s3: {…} }` (storage/create-driver.ts).
   */
  storage: string | Record<string, unknown>;
  deleteEnabled: boolean;
  /** Remove upload sessions older than this many seconds. */
  uploadMaxAge: number;
  /**
   * The YAML file's `gc:` section (schedule, gracePeriod, deleteUntagged, retention), checked
   * by storage's parseGcSettings where it is used, so that client verbs need not load storage.
   * Absent: no scheduled GC.
   */
  gc: Record<string, unknown> | null;
  /** Redis of the build queue: with it the registry also serves /api/builds and /hooks/git. */
  redis: string;
  /**
   * The YAML file's `notifications:` section (`endpoints: [{name, url, headers, timeout, retries,
   * backoff, ignoredMediaTypes, actions}]`), checked by registry's parseNotificationSettings. Needs `redis`.
   */
  notifications: Record<string, unknown> | null;
  /**
   * Request bodies (blob chunks, manifests): cut after this many seconds without a byte
   * arriving (0: never), or when they average under `bodyMinRate` bytes/s over each
   * `bodyRateWindow` seconds once `bodyRateGrace` seconds have passed (0: no minimum).
   * Time the registry holds a body back (storage being slow) never counts. Passed to
   * startRegistry by bodyLimits(cfg).
   */
  bodyIdleTimeout: number;
  bodyMinRate: number;
  bodyRateGrace: number;
  bodyRateWindow: number;
}

export const REGISTRY_DEFAULTS: RegistryConfig = {
  listen: '127.0.0.1:5000',
  data: './.slipway/registry',
  storage: '',
  deleteEnabled: true,
  uploadMaxAge: 7 * 24 * 3600,
  gc: null,
  redis: '',
  notifications: null,
  bodyIdleTimeout: 30,
  bodyMinRate: 1024,
  bodyRateGrace: 10,
  bodyRateWindow: 20,
};

type Partial_ = { [K in keyof RegistryConfig]?: RegistryConfig[K] };

const ENV: Partial<Record<keyof RegistryConfig, string>> = {
  listen: 'SLIPWAY_LISTEN',
  data: 'SLIPWAY_DATA',
  storage: 'SLIPWAY_STORAGE',
  deleteEnabled: 'SLIPWAY_DELETE_ENABLED',
  uploadMaxAge: 'SLIPWAY_UPLOAD_MAX_AGE',
  redis: 'SLIPWAY_REDIS_URL',
  bodyIdleTimeout: 'SLIPWAY_BODY_IDLE_TIMEOUT',
  bodyMinRate: 'SLIPWAY_BODY_MIN_RATE',
  bodyRateGrace: 'SLIPWAY_BODY_RATE_GRACE',
  bodyRateWindow: 'SLIPWAY_BODY_RATE_WINDOW',
};

function coerce<K extends keyof RegistryConfig>(key: K, value: unknown, where: string): RegistryConfig[K] {
  const want = typeof REGISTRY_DEFAULTS[key];
  if ((key === 'storage' || key === 'gc' || key === 'notifications') && typeof value === 'object' && value !== null && !Array.isArray(value)) {
    return value as RegistryConfig[K];
  }
  if ((key === 'gc' || key === 'notifications') && value === null) return value as RegistryConfig[K];
  if (want === 'boolean') {
    if (typeof value === 'boolean') return value as RegistryConfig[K];
    if (value === 'true' || value === '1') return true as RegistryConfig[K];
    if (value === 'false' || value === '0') return false as RegistryConfig[K];
  } else if (want === 'number') {
    const n = Number(value);
    if (value !== '' && Number.isFinite(n) && n >= 0) return n as RegistryConfig[K];
  } else if (typeof value === 'string' && value !== '') {
    return value as RegistryConfig[K];
  }
  throw new Error(`${where}: ${JSON.stringify(value)} is not a valid ${want} for ${key}`);
}

function fromFile(path: string): Partial_ {
  const doc = parseYaml(readFileSync(path, 'utf8')) as Record<string, unknown> | null;
  const out: Partial_ = {};
  for (const [k, v] of Object.entries(doc ?? {})) {
    if (!(k in REGISTRY_DEFAULTS)) throw new Error(`${path}: unknown setting ${k} (known: ${Object.keys(REGISTRY_DEFAULTS).join(', ')})`);
    const key = k as keyof RegistryConfig;
    (out as Record<string, unknown>)[key] = coerce(key, v, path);
  }
  return out;
}

function fromEnv(env: NodeJS.ProcessEnv): Partial_ {
  const out: Partial_ = {};
  for (const [key, name] of Object.entries(ENV) as [keyof RegistryConfig, string][]) {
    const v = env[name];
    if (v !== undefined) (out as Record<string, unknown>)[key] = coerce(key, v, name);
  }
  return out;
}

export function loadRegistryConfig(flags: Partial_ & { config?: string }, env = process.env): RegistryConfig {
  const file = flags.config ?? env.SLIPWAY_CONFIG;
  const defined = Object.fromEntries(Object.entries(flags).filter(([k, v]) => v !== undefined && k !== 'config'));
  const cfg = { ...REGISTRY_DEFAULTS, ...(file ? fromFile(file) : {}), ...fromEnv(env), ...defined } as RegistryConfig;
  return { ...cfg, data: resolve(cfg.data) };
}

/** The config's body limits as startRegistry takes them (registry/body-guard.ts). */
export function bodyLimits(cfg: RegistryConfig): Omit<BodyLimits, 'drainBytes'> {
  return {
    idleTimeoutMs: cfg.bodyIdleTimeout * 1000,
    minRate: cfg.bodyMinRate,
    rateGraceMs: cfg.bodyRateGrace * 1000,
    rateWindowMs: cfg.bodyRateWindow * 1000,
  };
}

/** `HOST:PORT`, `[v6]:PORT` or `:PORT` into parts. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) throw new Error(`invalid listen address ${JSON.stringify(listen)}: use HOST:PORT`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`invalid port in ${listen}`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}
