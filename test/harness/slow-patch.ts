import { request } from 'node:http';

export interface PatchOutcome {
  /** The registry's status, when it answered. */
  status?: number;
  body?: string;
  headers?: Record<string, string | string[] | undefined>;
  /** The connection's error, when it was cut instead. */
  error?: Error;
  /** Bytes written before the end or the error. */
  sent: number;
}

const STEP = 1024 * 1024;

/**
 * Sends one PATCH of `bytes` (declared with Content-Length and, when `start`
 * is given, Content-Range) in 1 MiB writes; after each write `hold(sent)` may
 * return a promise to wait for — the moment to kill something mid-upload.
 * Resolves with the answer or the error that cut the connection; never rejects.
 */
export function slowPatch(
  base: string,
  path: string,
  bytes: Buffer,
  opts: { start?: number; hold?: (sent: number) => Promise<void> | undefined; timeoutMs?: number } = {},
): Promise<PatchOutcome> {
  const url = new URL(path, base);
  const headers: Record<string, string | number> = { 'Content-Type': 'application/octet-stream', 'Content-Length': bytes.length };
  if (opts.start !== undefined) headers['Content-Range'] = `${opts.start}-${opts.start + bytes.length - 1}`;
  return new Promise((resolve) => {
    let sent = 0;
    let done = false;
    const finish = (outcome: Omit<PatchOutcome, 'sent'>) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ ...outcome, sent });
    };
    const req = request(url, { method: 'PATCH', headers, agent: false }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.once('end', () => finish({ status: res.statusCode, body, headers: res.headers }));
      res.once('error', (error) => finish({ error }));
    });
    const timer = setTimeout(() => req.destroy(new Error(`PATCH ${path}: no outcome within ${opts.timeoutMs ?? 60_000} ms`)), opts.timeoutMs ?? 60_000);
    req.once('error', (error) => finish({ error }));
    void (async () => {
      while (sent < bytes.length && !done && !req.destroyed) {
        const chunk = bytes.subarray(sent, sent + STEP);
        const flushed = req.write(chunk);
        sent += chunk.length;
        if (!flushed) {
          await new Promise<void>((r) => {
            const go = () => {
              req.off('drain', go);
              req.off('close', go);
              r();
            };
            req.on('drain', go);
            req.on('close', go);
          });
        }
        await opts.hold?.(sent);
      }
      if (!done && !req.destroyed) req.end();
    })().catch((error: Error) => finish({ error }));
  });
}

/** Polls `probe` every `everyMs` until it returns a value, for at most `timeoutMs`; the last value or error is in the failure. */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (let i = 0; i < 10_000; i++) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
      last = undefined;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms${last ? ` (last: ${(last as Error).message ?? String(last)})` : ''}`);
}
