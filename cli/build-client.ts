/*
 * The client side of `slipway build`: stream the context to POST /api/builds,
 * then follow the build's log (NDJSON) with a step progress bar on a terminal
 * and plain lines otherwise.
 */
import { request, type IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import { SECRETS_CONTENT_TYPE, secretsLine } from '../builder/client.js';
import type { BuildSecret, BuildStep, LogEntry, SubmittedBuild } from '../builder/index.js';

export class ServerUnreachableError extends Error {
  constructor(server: string, cause: string) {
    super(
      `cannot reach the Slipway server at ${server} (${cause}): start it with \`slipway up\` ` +
        `(or \`slipway registry\` with Redis configured), or point --server / SLIPWAY_SERVER at it`,
    );
  }
}

function reachError(server: string, err: unknown): Error {
  const e = err as NodeJS.ErrnoException;
  if (['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ECONNRESET', 'ETIMEDOUT', 'EAI_AGAIN'].includes(e.code ?? '')) {
    return new ServerUnreachableError(server, e.code === 'ECONNREFUSED' ? 'connection refused' : (e.code ?? e.message));
  }
  return e instanceof Error ? e : new Error(String(err));
}

async function readAll(res: IncomingMessage): Promise<string> {
  let text = '';
  for await (const chunk of res) text += (chunk as Buffer).toString();
  return text;
}

function errorText(status: number, text: string): string {
  try {
    return (JSON.parse(text) as { error?: string }).error ?? text;
  } catch {
    return text || `HTTP ${status}`;
  }
}

/**
 * POSTs the context (streamed, chunked) with the build's options in the query and its
 * secrets' values in a first line of the body; returns the record and its cancel token.
 */
export function submitBuild(server: string, query: URLSearchParams, body: Readable, secrets: readonly BuildSecret[] = []): Promise<SubmittedBuild> {
  const url = new URL(`/api/builds?${query}`, server);
  const first = secrets.length ? secretsLine(secrets) : null;
  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (fn: () => void) => {
      if (!settled) {
        settled = true;
        fn();
      }
    };
    const req = request(url, { method: 'POST', headers: { 'Content-Type': first ? SECRETS_CONTENT_TYPE : 'application/x-tar' } });
    req.on('response', (res) => {
      body.unpipe(req);
      readAll(res).then(
        (text) =>
          settle(() =>
            res.statusCode === 201
              ? resolve(JSON.parse(text) as SubmittedBuild)
              : reject(new Error(`the server refused the build (${res.statusCode}): ${errorText(res.statusCode ?? 0, text)}`)),
          ),
        (err: unknown) => settle(() => reject(reachError(server, err))),
      );
    });
    // An early answer (503, 413) may cut the upload short; the answer wins.
    req.on('error', (err) => setTimeout(() => settle(() => reject(reachError(server, err))), 200));
    body.on('error', (err) => {
      req.destroy();
      settle(() => reject(new Error(`reading the build context failed: ${err.message}`)));
    });
    if (first) req.write(first);
    body.pipe(req);
  });
}

export async function apiJson<T>(server: string, path: string, method = 'GET', headers: Record<string, string> = {}): Promise<T> {
  let res: Response;
  try {
    res = await fetch(new URL(path, server), { method, headers });
  } catch (err) {
    throw reachError(server, (err as { cause?: unknown }).cause ?? err);
  }
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${errorText(res.status, text)}`);
  return JSON.parse(text) as T;
}

/** Calls `onEntry` for every log entry until the build ends. */
export function followBuild(server: string, id: string, onEntry: (e: LogEntry) => void): Promise<void> {
  const url = new URL(`/api/builds/${id}/log?follow=1&format=ndjson`, server);
  return new Promise((resolve, reject) => {
    const req = request(url, (res) => {
      if (res.statusCode !== 200) {
        void readAll(res).then((t) => reject(new Error(`following build ${id}: ${errorText(res.statusCode ?? 0, t)}`)));
        return;
      }
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buf += chunk;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim()) onEntry(JSON.parse(line) as LogEntry);
        }
      });
      res.on('end', () => resolve());
      res.on('error', (err) => reject(reachError(server, err)));
    });
    req.on('error', (err) => reject(reachError(server, err)));
    req.end();
  });
}

/** Prints entries: lines as they come, steps as a bar on a terminal. */
export async function logPrinter(tty: boolean): Promise<{ entry(e: LogEntry): void; stop(): void }> {
  const steps = new Map<number, BuildStep>();
  if (!tty) {
    return { entry: (e) => (e.type === 'line' ? void process.stdout.write(`${e.text}\n`) : undefined), stop: () => undefined };
  }
  const progress = (await import('cli-progress')).default;
  const multi = new progress.MultiBar(
    { format: ' {bar} {value}/{total} steps | {label}', hideCursor: true, clearOnComplete: true, barsize: 24, stream: process.stderr },
    progress.Presets.shades_classic,
  );
  let bar: ReturnType<typeof multi.create> | undefined;
  const finished = (s: BuildStep) => s.status !== 'planned' && s.status !== 'running';
  return {
    entry(e) {
      // Before the first step there is no bar, and multi.log() would hold the line back.
      if (e.type === 'line') {
        if (bar) multi.log(`${e.text}\n`);
        else process.stderr.write(`${e.text}\n`);
      }
      if (e.type !== 'step') return;
      steps.set(e.step.index, e.step);
      const total = Math.max(...steps.keys());
      const done = [...steps.values()].filter(finished).length;
      const label = `${e.step.status} ${e.step.instruction}`.slice(0, 60);
      if (!bar) bar = multi.create(total, done, { label });
      bar.setTotal(total);
      bar.update(done, { label });
    },
    stop: () => {
      if (bar) multi.update(); // writes the lines still held back
      multi.stop();
    },
  };
}
