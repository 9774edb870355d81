import type { IncomingMessage } from 'node:http';
import { Client } from 'minio';

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
}

export const MiB = 1024 * 1024;
/** S3's smallest part (every part of a multipart upload but the last). */
export const MIN_PART = 5 * MiB;
/** S3's largest part, and the largest single CopyObject. */
export const MAX_PART = 5 * 1024 * MiB;

export interface S3Target {
  client: Client;
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
  const client = new Client({
    endPoint: url.hostname.replace(/^\[|\]$/g, ''),
    port,
    useSSL,
    accessKey,
    secretKey,
    region: opts.region ?? 'us-east-1',
    pathStyle: opts.pathStyle ?? true,
    // putObject is only given buffers of at most one part: make sure it sends them in one PUT.
    partSize: Math.max(partSize, 64 * MiB),
  });
  return { client, bucket: opts.bucket, endpoint: `${useSSL ? 'https' : 'http'}://${url.host}`, partSize, copyPartSize };
}

const codeOf = (err: unknown): string | undefined => (err as { code?: string } | null)?.code;

export const isNotFound = (err: unknown): boolean => ['NoSuchKey', 'NotFound'].includes(codeOf(err) ?? '');
export const isInvalidRange = (err: unknown): boolean => codeOf(err) === 'InvalidRange';

const UNREACHABLE = ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'ECONNRESET', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE'];
const DENIED = ['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken'];

/** An S3 failure that says which endpoint and bucket, what was attempted and what to do. */
export class S3StorageError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function s3Error(t: Pick<S3Target, 'endpoint' | 'bucket'>, what: string, err: unknown): Error {
  if (err instanceof S3StorageError) return err;
  const code = codeOf(err) ?? 'Unknown';
  const detail = (err as Error)?.message || code;
  const where = `S3 at ${t.endpoint} (bucket ${t.bucket})`;
  if (code === 'NoSuchBucket') {
    return new S3StorageError(`${where}: ${what} failed: the bucket does not exist; create it or fix the bucket name`, code, { cause: err });
  }
  if (DENIED.includes(code)) {
    return new S3StorageError(
      `${where}: ${what} failed: credentials refused (${code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or SLIPWAY_S3_ACCESS_KEY/SLIPWAY_S3_SECRET_KEY)`,
      code,
      { cause: err },
    );
  }
  if (UNREACHABLE.includes(code)) {
    return new S3StorageError(`cannot reach S3 at ${t.endpoint}: ${what} failed (${code}); is the server up and the endpoint right?`, code, { cause: err });
  }
  return new S3StorageError(`${where}: ${what} failed: ${detail}`, code, { cause: err });
}

/** Reads a (small) response body. */
export async function readAll(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export const contentLength = (res: unknown): number | undefined => {
  const v = (res as IncomingMessage).headers?.['content-length'];
  return v === undefined ? undefined : Number(v);
};

/** `/bucket/key` with the key escaped for x-amz-copy-source. */
export const copySource = (bucket: string, key: string): string => `/${bucket}/${key.split('/').map(encodeURIComponent).join('/')}`;
