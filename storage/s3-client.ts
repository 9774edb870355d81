import { Client } from 'minio';
import { StorageUnavailableError } from './driver.js';
import { DEFAULT_TIMEOUTS, S3Transport } from './s3-transport.js';

/** Where and how the S3 driver stores: one bucket, optionally under a key prefix. */
export interface S3Options {
  /** `HOST:PORT`, or a URL `http(s)://HOST:PORT` (its scheme then decides TLS). */
  endpoint: string;
  bucket: string;
  /** Default us-east-1 (the only region radosgw accepts without zone configuration). */
  region?: string;
  /** Key prefix inside the bucket; all keys are `<prefix>/v2/…`. */
  prefix?: string;
  /** Default from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. */
  accessKey?: string;
  secretKey?: string;
  /** Path-style addressing (`host/bucket/key`); default true (MinIO, Ceph RGW). */
  pathStyle?: boolean;
  /** Default: true unless the endpoint is an http:// URL. */
  tls?: boolean;
  /** Size of the parts of a streamed write (memory per writer is about twice this); default 16 MiB. */
  partSize?: number;
  /** Largest part of a server-side multipart copy; S3's limit (5 GiB) unless a test wants to exercise it small. */
  copyPartSize?: number;
  /** Lifetime of presigned redirect URLs in seconds; default 20 minutes. */
  redirectExpiry?: number;
  /** Ms to wait for a connection to S3; default 5 s. */
  connectTimeout?: number;
  /** Ms a request may make no progress (no byte sent or received) before it fails; default 30 s. */
  idleTimeout?: number;
  /**
   * Sign the SHA-256 of every request body (SigV4's payload signing) when the
   * connection is plain HTTP. Off by default: it costs a second hash of every
   * byte pushed (the registry already verifies each blob's digest), and it
   * protects only upload bodies, while everything read back over the same
   * plain connection is unprotected anyway; use TLS against an untrusted
   * network. Over TLS the payload is never signed (the client's behaviour).
   */
  signPayload?: boolean;
}

export const MiB = 1024 * 1024;
/** S3's smallest part (every part of a multipart upload but the last). */
export const MIN_PART = 5 * MiB;
/** S3's largest part, and the largest single CopyObject. */
export const MAX_PART = 5 * 1024 * MiB;

export interface S3Target {
  client: Client;
  /** The client's connections, timeouts and breaker. */
  transport: S3Transport;
  /** Waits while the breaker decides whether S3 is back; fails at once while it is known down. */
  ready(): Promise<void>;
  bucket: string;
  /** http(s)://host:port, for messages. */
  endpoint: string;
  partSize: number;
  copyPartSize: number;
}

export function s3Target(opts: S3Options, env: NodeJS.ProcessEnv = process.env): S3Target {
  const withScheme = /^[a-z]+:\/\//i.test(opts.endpoint) ? opts.endpoint : `${opts.tls === false ? 'http' : 'https'}://${opts.endpoint}`;
  const url = new URL(withScheme);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`S3 endpoint ${opts.endpoint}: use HOST:PORT or an http(s) URL`);
  const useSSL = opts.tls ?? url.protocol === 'https:';
  const accessKey = opts.accessKey ?? env.AWS_ACCESS_KEY_ID;
  const secretKey = opts.secretKey ?? env.AWS_SECRET_ACCESS_KEY;
  if (!accessKey || !secretKey) {
    throw new Error(`no credentials for S3 at ${opts.endpoint}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or SLIPWAY_S3_ACCESS_KEY/SLIPWAY_S3_SECRET_KEY)`);
  }
  const partSize = opts.partSize ?? 16 * MiB;
  const copyPartSize = opts.copyPartSize ?? MAX_PART;
  if (partSize < MIN_PART || partSize > MAX_PART) throw new Error(`S3 partSize must be between 5 MiB and 5 GiB, not ${partSize}`);
  if (copyPartSize < 2 * MIN_PART || copyPartSize > MAX_PART) throw new Error(`S3 copyPartSize must be between 10 MiB and 5 GiB, not ${copyPartSize}`);
  const port = url.port ? Number(url.port) : useSSL ? 443 : 80;
  const timeouts = { connectMs: opts.connectTimeout ?? DEFAULT_TIMEOUTS.connectMs, idleMs: opts.idleTimeout ?? DEFAULT_TIMEOUTS.idleMs };
  for (const [name, ms] of Object.entries(timeouts)) {
    if (!Number.isFinite(ms) || ms < 50) throw new Error(`S3 ${name.replace('Ms', '')} timeout must be at least 50 ms, not ${ms}`);
  }
  const transport = new S3Transport(useSSL, timeouts);
  const client = new Client({
    endPoint: url.hostname.replace(/^\[|\]$/g, ''),
    port,
    useSSL,
    accessKey,
    secretKey,
    region: opts.region ?? 'us-east-1',
    pathStyle: opts.pathStyle ?? true,
    transport: { request: transport.request } as unknown as ConstructorParameters<typeof Client>[0]['transport'],
    transportAgent: transport.agent,
  });
  if (!opts.signPayload) client.enableSHA256 = false;
  const ready = () => transport.ready(() => client.bucketExists(opts.bucket));
  return { client, transport, ready, bucket: opts.bucket, endpoint: `${useSSL ? 'https' : 'http'}://${url.host}`, partSize, copyPartSize };
}

const codeOf = (err: unknown): string | undefined => (err as { code?: string } | null)?.code;

export const isNotFound = (err: unknown): boolean => ['NoSuchKey', 'NotFound'].includes(codeOf(err) ?? '');
export const isInvalidRange = (err: unknown): boolean => codeOf(err) === 'InvalidRange';

const UNREACHABLE = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'ECONNABORTED'];
const DENIED = ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken', 'UserSuspended', 'AccountProblem'];
/** S3's own "try again" answers (minio retries them once, then throws without a code). */
const BUSY = ['SlowDown', 'ServiceUnavailable', 'InternalError', 'RequestTimeout', 'RequestTimeTooSkewed'];
/** Seconds a client should wait: a little for an outage, longer for a misconfiguration an operator must fix. */
const RETRY_OUTAGE = 5;
const RETRY_CONFIG = 30;

/** An S3 failure that is not the storage being unavailable (a bug, an unexpected answer). */
export class S3StorageError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * An S3 failure as an error that says which endpoint and bucket, what was
 * attempted and what to do. Unreachable, timing out, busy, refusing the
 * credentials or without the bucket: StorageUnavailableError (the registry
 * answers 503); anything else: S3StorageError.
 */
export function s3Error(t: Pick<S3Target, 'endpoint' | 'bucket'>, what: string, err: unknown): Error {
  if (err instanceof S3StorageError || err instanceof StorageUnavailableError) return err;
  const detail = (err as Error)?.message || 'no detail';
  const code = codeOf(err) ?? (/Retryable HTTP status: 5\d\d/.test(detail) ? 'ServiceUnavailable' : 'Unknown');
  const where = `S3 at ${t.endpoint} (bucket ${t.bucket})`;
  const unavailable = (message: string, retryAfter: number) => new StorageUnavailableError(message, t.endpoint, retryAfter, code, { cause: err });
  if (code === 'NoSuchBucket') {
    return unavailable(`${where}: ${what} failed: the bucket does not exist; create it or fix the bucket name`, RETRY_CONFIG);
  }
  if (DENIED.includes(code)) {
    return unavailable(
      `${where}: ${what} failed: credentials refused (${code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or SLIPWAY_S3_ACCESS_KEY/SLIPWAY_S3_SECRET_KEY)`,
      RETRY_CONFIG,
    );
  }
  if (UNREACHABLE.includes(code)) {
    return unavailable(`cannot reach S3 at ${t.endpoint}: ${what} failed (${code}: ${detail}); is the server up and the endpoint right?`, RETRY_OUTAGE);
  }
  if (BUSY.includes(code)) return unavailable(`${where}: ${what} failed: S3 is busy or failing (${code}: ${detail})`, RETRY_OUTAGE);
  return new S3StorageError(`${where}: ${what} failed: ${detail}`, code, { cause: err });
}

/** Reads a (small) response body. */
export async function readAll(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}


/** `/bucket/key` with the key escaped for x-amz-copy-source. */
export const copySource = (bucket: string, key: string): string => `/${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
