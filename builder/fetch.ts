/** ADD <url>: the body streamed to a file under the build's scratch space, hashed on the way. */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { join, posix } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export interface FetchedUrl {
  url: string;
  path: string;
  digest: string;
  size: number;
  /** The file name the URL's path ends in ('' when it has none). */
  name: string;
  /** From Last-Modified, when the server sent it. */
  mtimeMs?: number;
}

export const isUrl = (s: string): boolean => /^https?:\/\//i.test(s);

export async function fetchUrl(url: string, dir: string, signal?: AbortSignal): Promise<FetchedUrl> {
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'follow', ...(signal ? { signal } : {}) });
  } catch (err) {
    throw new Error(`cannot fetch ${url}: ${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}`);
  }
  if (!res.ok || !res.body) throw new Error(`cannot fetch ${url}: HTTP ${res.status} ${res.statusText}`);
  const hash = createHash('sha256');
  let size = 0;
  const path = join(dir, `url-${createHash('sha256').update(url).digest('hex').slice(0, 16)}-${Date.now()}`);
  const counting = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  await pipeline(Readable.fromWeb(res.body as import('node:stream/web').ReadableStream), counting, createWriteStream(path));
  const modified = res.headers.get('last-modified');
  const mtimeMs = modified ? Date.parse(modified) : NaN;
  const name = decodeURIComponent(posix.basename(new URL(res.url || url).pathname));
  return { url, path, digest: `sha256:${hash.digest('hex')}`, size, name, ...(Number.isFinite(mtimeMs) ? { mtimeMs } : {}) };
}
