/*
 * A build's options as query parameters of POST /api/builds, after docker's
 * own /build endpoint: t (repeated), dockerfile, buildargs/labels (JSON
 * objects), target, nocache, network. The CLI writes them with `buildQuery`,
 * the API reads them with `parseBuildQuery`. Secrets are not options: their
 * values travel in the body (secrets-wire.ts), and a `secrets` parameter is refused.
 */
import type { BuildSpec } from './records.js';

export class BadRequestError extends Error {}

/** `HOST[:PORT]/name[:tag]`: builds push to a registry, so the host is required. */
const REF_RE = /^(?:[a-z0-9.-]+|\[[0-9a-f:]+\])(?::\d+)?\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?$/;

export function validateRef(ref: string): string {
  if (!REF_RE.test(ref)) throw new BadRequestError(`invalid image reference ${JSON.stringify(ref)}: use HOST:PORT/repo:tag`);
  return ref.includes(':', ref.indexOf('/')) ? ref : `${ref}:latest`;
}

export function buildQuery(spec: BuildSpec): URLSearchParams {
  const q = new URLSearchParams();
  for (const t of spec.tags) q.append('t', t);
  q.set('dockerfile', spec.dockerfile);
  if (Object.keys(spec.buildArgs).length) q.set('buildargs', JSON.stringify(spec.buildArgs));
  if (Object.keys(spec.labels).length) q.set('labels', JSON.stringify(spec.labels));
  if (spec.target) q.set('target', spec.target);
  if (spec.noCache) q.set('nocache', '1');
  q.set('network', spec.network);
  return q;
}

function jsonParam<T>(q: URLSearchParams, name: string, fallback: T, check: (v: unknown) => boolean): T {
  const raw = q.get(name);
  if (raw === null || raw === '') return fallback;
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new BadRequestError(`${name} is not JSON: ${raw.slice(0, 80)}`);
  }
  if (!check(value)) throw new BadRequestError(`${name} has the wrong shape: ${raw.slice(0, 80)}`);
  return value as T;
}

const stringMap = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every((x) => typeof x === 'string');

/**
 * The server never reads a file or a variable a caller names: a `secrets` parameter
 * (`[{"id":…,"src":…}]`, `{"env":…}`) is refused, saying where secrets go instead.
 */
function refuseSecretsParam(q: URLSearchParams): void {
  const raw = q.get('secrets');
  if (raw === null) return;
  const names = /"(src|source|env)"\s*:/.test(raw) ? 'secret sources (src/env) are not read on the server' : 'secrets are not a query parameter';
  throw new BadRequestError(
    `${names}: the client reads each secret and sends its value in the body ` +
      '(Content-Type application/vnd.slipway.build+tar, as `slipway build --secret id=NAME,src=PATH` does)',
  );
}

/** The spec asked for; `secrets` (ids) is left empty: the body carries them. */
export function parseBuildQuery(q: URLSearchParams): BuildSpec {
  refuseSecretsParam(q);
  const tags = q.getAll('t').flatMap((t) => t.split(',')).map((t) => t.trim()).filter(Boolean);
  if (tags.length === 0) throw new BadRequestError('a build needs at least one tag: t=HOST:PORT/repo:tag');
  const dockerfile = q.get('dockerfile') || 'Dockerfile';
  if (dockerfile.startsWith('/') || dockerfile.split('/').includes('..')) throw new BadRequestError(`dockerfile must be a path inside the context: ${dockerfile}`);
  const network = q.get('network') || 'none';
  if (network !== 'none' && network !== 'host') throw new BadRequestError(`network must be none or host, not ${network}`);
  const nocache = q.get('nocache');
  return {
    tags: tags.map(validateRef),
    dockerfile,
    buildArgs: jsonParam(q, 'buildargs', {}, stringMap),
    labels: jsonParam(q, 'labels', {}, stringMap),
    target: q.get('target') || undefined,
    noCache: nocache === '1' || nocache === 'true',
    network,
    secrets: [],
  };
}
