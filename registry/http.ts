import type { Request, Response } from './context.js';
import { RegistryError } from './errors.js';

/** Parses a single `Range: bytes=a-b` against a blob's size; null means the whole blob. */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | null {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null; // unparseable or multi-range: serve it whole, as RFC 9110 allows
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    start = Math.max(0, size - suffix);
    end = size - 1;
    if (suffix === 0) start = size;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) start = size;
  }
  if (start >= size || start > end) {
    throw new RegistryError('RANGE_INVALID', { size }, `range ${header} is outside the blob's ${size} bytes`, {
      'Content-Range': `bytes */${size}`,
    });
  }
  return { start, end };
}

/** A chunk's `Content-Range: a-b` (also with a `bytes ` or `bytes=` prefix). */
export function parseContentRange(header: string | undefined): { start: number; end: number } | undefined {
  if (header === undefined) return undefined;
  const m = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  if (!m) throw new RegistryError('RANGE_INVALID', undefined, `malformed Content-Range ${JSON.stringify(header.slice(0, 100))}`);
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) throw new RegistryError('RANGE_INVALID', undefined, `Content-Range ${header} ends before it starts`);
  return { start, end };
}

/** Declared body length, undefined for a streamed (chunked) body. */
export function contentLength(req: Request): number | undefined {
  const raw = req.headers['content-length'];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw new RegistryError('SIZE_INVALID', undefined, `bad Content-Length ${raw}`);
  return n;
}

/** Whether the request carries body bytes at all. */
export function hasBody(req: Request): boolean {
  const length = contentLength(req);
  return length === undefined ? req.headers['transfer-encoding'] !== undefined : length > 0;
}

/** `Range: 0-<last byte>` as distribution reports an upload's progress (0-0 when empty). */
export const uploadRange = (offset: number): string => `0-${Math.max(0, offset - 1)}`;

export function noContent(res: Response, status: number, headers: Record<string, string>): void {
  for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
  res.setHeader('Content-Length', '0');
  res.statusCode = status;
  res.end();
}

/** Pagination parameters `n` and `last` of tags list and catalog. */
export function pageParams(query: URLSearchParams, defaultN: number | undefined): { n: number | undefined; last: string | undefined } {
  const rawN = query.get('n') ?? undefined;
  let n = defaultN;
  if (rawN !== undefined) {
    if (!/^\d+$/.test(rawN)) {
      throw new RegistryError('PAGINATION_NUMBER_INVALID', { n: String(rawN) }, 'n must be a non-negative integer');
    }
    n = Number(rawN);
  }
  const last = query.get('last') || undefined;
  return { n, last };
}

/** One page of a sorted list, and the Link header to the next one. */
export function paginate(items: string[], n: number | undefined, last: string | undefined, path: string): { page: string[]; link?: string } {
  const after = last === undefined ? items : items.filter((x) => x > last);
  if (n === 0) return { page: [] };
  if (n === undefined || after.length <= n) return { page: after };
  const page = after.slice(0, n);
  const next = page[page.length - 1] ?? '';
  return { page, link: `<${path}?n=${n}&last=${encodeURIComponent(next)}>; rel="next"` };
}

/** A JSON reply with an exact Content-Length. */
export function sendJson(res: Response, status: number, value: unknown, contentType = 'application/json'): void {
  const body = JSON.stringify(value);
  res.statusCode = status;
  res.setHeader('Content-Type', contentType);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
}
