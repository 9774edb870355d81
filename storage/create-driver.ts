import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StorageDriver } from './driver.js';
import { FilesystemDriver, preparePrivateRoot } from './fs-driver.js';
import type { S3Options } from './s3-client.js';
import { S3Driver } from './s3-driver.js';

/*
 * Where the registry stores, as one value:
 *   /some/dir   or   file:///some/dir                       the filesystem driver
 *   s3://[KEY:SECRET@]HOST:PORT/BUCKET[/PREFIX][?region=us-east-1&tls=false&prefix=P&pathstyle=true&redirect=true&timeout=30&connecttimeout=5]
 * or, in a YAML file, `storage: { s3: { endpoint, bucket, region, prefix, tls, pathStyle,
 * redirect, accessKey, secretKey, partSize, timeout, connectTimeout, signPayload } }` / `storage: { filesystem: { dir } }`.
 * `timeout` (seconds) is how long an S3 request may make no progress before the registry
 * gives up on it (and answers 503), `connecttimeout` how long connecting may take.
 * S3 credentials not given there come from SLIPWAY_S3_ACCESS_KEY/SLIPWAY_S3_SECRET_KEY,
 * then AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY. `redirect` makes blob GETs answer 307
 * with a presigned URL instead of proxying the bytes.
 */
export type StorageSpec = { kind: 'filesystem'; dir: string } | { kind: 's3'; options: S3Options; redirect: boolean };

export interface CreatedDriver {
  driver: StorageDriver;
  redirect: boolean;
  /** Where, for a log line (no credentials). */
  description: string;
}

const S3_QUERY = ['region', 'tls', 'prefix', 'pathstyle', 'redirect', 'timeout', 'connecttimeout'];
const S3_KEYS = ['endpoint', 'bucket', 'region', 'prefix', 'tls', 'pathStyle', 'redirect', 'accessKey', 'secretKey', 'partSize', 'timeout', 'connectTimeout', 'signPayload'];

/** A number of seconds (fractions allowed) as ms; undefined when absent. */
function seconds(value: unknown, where: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value === '' || !Number.isFinite(n) || n <= 0) throw new Error(`${where}: ${JSON.stringify(value)} is not a positive number of seconds`);
  return Math.round(n * 1000);
}

function bool(value: unknown, where: string): boolean {
  if (value === true || value === 'true' || value === '1') return true;
  if (value === false || value === 'false' || value === '0') return false;
  throw new Error(`${where}: ${JSON.stringify(value)} is not true or false`);
}

function withCredentials(options: S3Options, env: NodeJS.ProcessEnv): S3Options {
  const accessKey = options.accessKey || env.SLIPWAY_S3_ACCESS_KEY || env.AWS_ACCESS_KEY_ID;
  const secretKey = options.secretKey || env.SLIPWAY_S3_SECRET_KEY || env.AWS_SECRET_ACCESS_KEY;
  return { ...options, accessKey, secretKey };
}

function parseS3Url(spec: string, env: NodeJS.ProcessEnv): StorageSpec {
  const url = new URL(spec);
  const [bucket, ...rest] = url.pathname.replace(/^\/+/, '').split('/');
  if (!url.host || !bucket) throw new Error(`storage ${JSON.stringify(spec)}: use s3://HOST:PORT/BUCKET[?region=…&tls=false&prefix=…]`);
  for (const key of url.searchParams.keys()) {
    if (!S3_QUERY.includes(key)) throw new Error(`storage ${spec}: unknown parameter ${key} (known: ${S3_QUERY.join(', ')})`);
  }
  const q = (k: string) => url.searchParams.get(k) ?? undefined;
  const pathPrefix = rest.join('/');
  if (pathPrefix && q('prefix') !== undefined) throw new Error(`storage ${spec}: give the prefix either after the bucket or as ?prefix=, not both`);
  const options: S3Options = {
    endpoint: url.host,
    bucket,
    region: q('region'),
    prefix: q('prefix') ?? (pathPrefix || undefined),
    tls: q('tls') === undefined ? true : bool(q('tls'), `storage ${spec}: tls`),
    pathStyle: q('pathstyle') === undefined ? undefined : bool(q('pathstyle'), `storage ${spec}: pathstyle`),
    accessKey: url.username ? decodeURIComponent(url.username) : undefined,
    secretKey: url.password ? decodeURIComponent(url.password) : undefined,
    idleTimeout: seconds(q('timeout'), `storage ${spec}: timeout`),
    connectTimeout: seconds(q('connecttimeout'), `storage ${spec}: connecttimeout`),
  };
  const redirect = q('redirect') === undefined ? false : bool(q('redirect'), `storage ${spec}: redirect`);
  return { kind: 's3', options: withCredentials(options, env), redirect };
}

function parseObject(spec: Record<string, unknown>, env: NodeJS.ProcessEnv): StorageSpec {
  const [kind, ...others] = Object.keys(spec);
  const body = (kind ? spec[kind] : undefined) as Record<string, unknown> | undefined;
  if (others.length || typeof body !== 'object' || body === null) throw new Error('storage: give exactly one of `s3: {…}` or `filesystem: {dir: …}`');
  if (kind === 'filesystem') {
    if (typeof body.dir !== 'string') throw new Error('storage.filesystem.dir: a directory is required');
    return { kind: 'filesystem', dir: resolve(body.dir) };
  }
  if (kind !== 's3') throw new Error(`storage: unknown driver ${kind} (known: s3, filesystem)`);
  for (const key of Object.keys(body)) {
    if (!S3_KEYS.includes(key)) throw new Error(`storage.s3: unknown setting ${key} (known: ${S3_KEYS.join(', ')})`);
  }
  if (typeof body.endpoint !== 'string' || typeof body.bucket !== 'string') throw new Error('storage.s3: endpoint and bucket are required');
  const str = (k: string) => (body[k] === undefined ? undefined : String(body[k]));
  const options: S3Options = {
    endpoint: body.endpoint,
    bucket: body.bucket,
    region: str('region'),
    prefix: str('prefix'),
    tls: body.tls === undefined ? undefined : bool(body.tls, 'storage.s3.tls'),
    pathStyle: body.pathStyle === undefined ? undefined : bool(body.pathStyle, 'storage.s3.pathStyle'),
    accessKey: str('accessKey'),
    secretKey: str('secretKey'),
    partSize: body.partSize === undefined ? undefined : Number(body.partSize),
    idleTimeout: seconds(body.timeout, 'storage.s3.timeout'),
    connectTimeout: seconds(body.connectTimeout, 'storage.s3.connectTimeout'),
    signPayload: body.signPayload === undefined ? undefined : bool(body.signPayload, 'storage.s3.signPayload'),
  };
  const redirect = body.redirect === undefined ? false : bool(body.redirect, 'storage.s3.redirect');
  return { kind: 's3', options: withCredentials(options, env), redirect };
}

export function parseStorageSpec(spec: string | Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): StorageSpec {
  if (typeof spec !== 'string') return parseObject(spec, env);
  if (spec.startsWith('s3://')) return parseS3Url(spec, env);
  if (spec.startsWith('file://')) return { kind: 'filesystem', dir: fileURLToPath(spec) };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) throw new Error(`storage ${JSON.stringify(spec)}: unknown scheme (use s3://…, file:///dir or a directory)`);
  if (!spec) throw new Error('storage: empty; give a directory, file:///dir or s3://HOST:PORT/BUCKET');
  return { kind: 'filesystem', dir: resolve(spec) };
}

/**
 * The driver for a storage spec, checked before use: the filesystem's
 * directory is created (or tightened) private to this user; S3 must answer within `verifyTimeoutMs`, have the
 * bucket and accept the credentials, or this fails naming the endpoint.
 */
export async function createDriver(
  spec: string | Record<string, unknown> | StorageSpec,
  opts: { env?: NodeJS.ProcessEnv; verifyTimeoutMs?: number } = {},
): Promise<CreatedDriver> {
  const env = opts.env ?? process.env;
  const parsed = typeof spec === 'object' && 'kind' in spec ? (spec as StorageSpec) : parseStorageSpec(spec as string | Record<string, unknown>, env);
  if (parsed.kind === 'filesystem') {
    await preparePrivateRoot(parsed.dir);
    return { driver: new FilesystemDriver(parsed.dir), redirect: false, description: parsed.dir };
  }
  const driver = new S3Driver(parsed.options, env);
  await driver.verify(opts.verifyTimeoutMs ?? 5000);
  return { driver, redirect: parsed.redirect, description: `s3 ${driver.location}` };
}
