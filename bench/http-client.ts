import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  /** Bytes of the response body (the body itself is discarded unless `keepBody`). */
  bytes: number;
  body: string;
}

export interface RequestOptions {
  method: string;
  headers?: Record<string, string | number>;
  /** Written in order, without copying; Content-Length is set from their sizes. */
  body?: readonly Buffer[];
  keepBody?: boolean;
  /** Sees every chunk of the response body (e.g. to hash it). */
  onData?: (chunk: Buffer) => void;
  timeoutMs?: number;
}

/** One HTTP request over a keep-alive agent; the response body is counted and, on errors, kept. */
export function send(agent: Agent, url: URL, opts: RequestOptions): Promise<Reply> {
  const body = opts.body ?? [];
  const length = body.reduce((n, b) => n + b.length, 0);
  const headers: Record<string, string | number> = { ...opts.headers };
  if (opts.method !== 'GET' && opts.method !== 'HEAD') headers['Content-Length'] = length;
  return new Promise<Reply>((resolve, reject) => {
    const req = httpRequest(url, { method: opts.method, agent, headers, timeout: opts.timeoutMs ?? 120_000 }, (res) => {
      let bytes = 0;
      let text = '';
      const status = res.statusCode ?? 0;
      const keep = opts.keepBody === true || status >= 400;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        opts.onData?.(chunk);
        if (keep && text.length < 1 << 20) text += chunk.toString();
      });
      res.once('end', () => resolve({ status, headers: res.headers, bytes, body: text }));
      res.once('error', reject);
    });
    req.once('timeout', () => req.destroy(new Error(`${opts.method} ${url.pathname}: no response within ${opts.timeoutMs ?? 120_000} ms`)));
    req.once('error', reject);
    const last = body.length - 1;
    body.forEach((chunk, i) => (i === last ? req.end(chunk) : req.write(chunk)));
    if (last < 0) req.end();
  });
}

/** Fails with the method, path, status and the registry's error body when `status` is not expected. */
export function expectStatus(reply: Reply, want: number, what: string): Reply {
  if (reply.status !== want) {
    throw new Error(`${what}: HTTP ${reply.status}, expected ${want}: ${reply.body.slice(0, 500)}`);
  }
  return reply;
}

/** Runs `task` over `items` with at most `concurrency` in flight. */
export async function pool<T>(items: readonly T[], concurrency: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await task(item);
    }
  });
  await Promise.all(workers);
}
