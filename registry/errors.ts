import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  InvalidDigestError,
  ManifestInvalidError,
  StorageUnavailableError,
  StoreError,
  type StoreErrorKind,
} from '../storage/index.js';

/** The OCI Distribution error codes (plus distribution's RANGE_INVALID, TAG_INVALID) and their HTTP status. */
export const ERROR_CODES = {
  BLOB_UNKNOWN: { status: 404, message: 'blob unknown to registry' },
  BLOB_UPLOAD_INVALID: { status: 400, message: 'blob upload invalid' },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: 'blob upload unknown to registry' },
  DIGEST_INVALID: { status: 400, message: 'provided digest did not match uploaded content' },
  MANIFEST_BLOB_UNKNOWN: { status: 400, message: 'manifest references a manifest or blob unknown to registry' },
  MANIFEST_INVALID: { status: 400, message: 'manifest invalid' },
  MANIFEST_UNKNOWN: { status: 404, message: 'manifest unknown to registry' },
  NAME_INVALID: { status: 400, message: 'invalid repository name' },
  NAME_UNKNOWN: { status: 404, message: 'repository name not known to registry' },
  SIZE_INVALID: { status: 400, message: 'provided length did not match content length' },
  MANIFEST_TOO_LARGE: { status: 413, message: 'manifest is larger than the registry accepts' },
  TAG_INVALID: { status: 400, message: 'invalid tag' },
  RANGE_INVALID: { status: 416, message: 'invalid content range' },
  PAGINATION_NUMBER_INVALID: { status: 400, message: 'invalid number of results requested' },
  UNAUTHORIZED: { status: 401, message: 'authentication required' },
  DENIED: { status: 403, message: 'requested access to the resource is denied' },
  UNSUPPORTED: { status: 405, message: 'the operation is unsupported' },
  TOOMANYREQUESTS: { status: 429, message: 'too many requests' },
  /** Not OCI: a request body that stalled or came too slowly (body-guard.ts). */
  REQUEST_TIMEOUT: { status: 408, message: 'the request body stopped or came too slowly' },
  UNAVAILABLE: { status: 503, message: 'storage is unavailable; try again later' },
  NOT_FOUND: { status: 404, message: 'no such endpoint' },
  UNKNOWN: { status: 500, message: 'unknown error' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export class RegistryError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    readonly detail?: unknown,
    message?: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message ?? ERROR_CODES[code].message);
    this.status = ERROR_CODES[code].status;
  }
}

/** How the store's domain errors read at the API's edge. */
const STORE_TO_CODE: Record<StoreErrorKind, ErrorCode> = {
  'blob-unknown': 'BLOB_UNKNOWN',
  'upload-unknown': 'BLOB_UPLOAD_UNKNOWN',
  'upload-busy': 'BLOB_UPLOAD_INVALID',
  'digest-mismatch': 'DIGEST_INVALID',
  'size-mismatch': 'SIZE_INVALID',
  'range-mismatch': 'RANGE_INVALID',
  'manifest-unknown': 'MANIFEST_UNKNOWN',
  'tag-unknown': 'MANIFEST_UNKNOWN',
  'repository-unknown': 'NAME_UNKNOWN',
};

export function toRegistryError(err: unknown): RegistryError | null {
  if (err instanceof RegistryError) return err;
  if (err instanceof StoreError) return new RegistryError(STORE_TO_CODE[err.kind], err.detail, err.message);
  if (err instanceof InvalidDigestError) return new RegistryError('DIGEST_INVALID', undefined, err.message);
  if (err instanceof ManifestInvalidError) return new RegistryError('MANIFEST_INVALID', undefined, err.message);
  if (err instanceof StorageUnavailableError) {
    return new RegistryError('UNAVAILABLE', { reason: err.reason }, `storage unavailable: ${err.message}`, { 'Retry-After': String(err.retryAfter) });
  }
  return null;
}

/** Storage outages are logged, but once per this many ms, not once per failed request. */
const OUTAGE_LOG_EVERY_MS = 10_000;
let lastOutageLog = 0;
let outagesSinceLog = 0;

function logOutage(err: StorageUnavailableError, log: (err: unknown) => void): void {
  outagesSinceLog++;
  const now = Date.now();
  if (now - lastOutageLog < OUTAGE_LOG_EVERY_MS) return;
  log(`answering 503 (${outagesSinceLog} request(s) since the last such line): ${err.message}`);
  lastOutageLog = now;
  outagesSinceLog = 0;
}

/** The one place that writes `{"errors":[…]}`. */
export function writeError(err: unknown, req: IncomingMessage, res: ServerResponse, log: (err: unknown) => void): void {
  const known = toRegistryError(err);
  if (err instanceof StorageUnavailableError) logOutage(err, log);
  if (!known) {
    const aborted = req.destroyed || (err as NodeJS.ErrnoException)?.code === 'ECONNRESET' || (err as Error)?.name === 'AbortError';
    if (!aborted) log(err);
  }
  const e = known ?? new RegistryError('UNKNOWN', undefined, 'internal error');
  if (res.headersSent) {
    res.destroy();
    return;
  }
  for (const [k, v] of Object.entries(e.headers)) res.setHeader(k, v);
  const body = JSON.stringify({ errors: [{ code: e.code, message: e.message, ...(e.detail === undefined ? {} : { detail: e.detail }) }] });
  res.statusCode = e.status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}
