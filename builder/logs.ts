/*
 * Build logs: one Redis stream per build. The worker appends entries (batched,
 * in order); any number of followers read the same stream, each from its own
 * position, so the CLI, the API and the dashboard all see lines while the build
 * runs, and the whole log stays queryable afterwards (XRANGE).
 *
 * Entry fields: t = line | step | status | end; d = the text for a line, JSON otherwise.
 * `end` is written once, when the build reached a terminal state; followers stop there.
 */
import type { Redis } from 'ioredis';
import type { BuildLogger, BuildStep } from './types.js';
import type { BuildFailure, BuildStatus } from './records.js';
import { keys } from './redis.js';

export type LogEntry =
  | { id: string; type: 'line'; text: string }
  | { id: string; type: 'step'; step: BuildStep }
  | { id: string; type: 'status'; status: BuildStatus; attempt?: number; worker?: string }
  | { id: string; type: 'end'; status: BuildStatus; imageDigest?: string; error?: BuildFailure };

type Pending = ['line', string] | ['step', BuildStep] | ['status' | 'end', Record<string, unknown>];

/** Longest log kept per build (approximate, oldest lines dropped first). */
export const MAX_LOG_ENTRIES = 200_000;
const FLUSH_MS = 40;
const FLUSH_COUNT = 256;
const RECENT = 20;

/** Batches entries into pipelined XADDs; `flush()` resolves when all written so far is in Redis. */
export class LogWriter implements BuildLogger {
  private pending: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();
  private readonly recent: string[] = [];
  private readonly steps = new Map<number, string>();
  private readonly streamKey: string;
  private readonly stepsKey: string;
  private mask: (text: string) => string = (text) => text;
  lastError: unknown;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    id: string,
  ) {
    this.streamKey = keys(prefix).log(id);
    this.stepsKey = keys(prefix).steps(id);
  }

  /** Hides the build's secret values (redact.ts secretMasker) in every line written from now on. */
  maskWith(mask: (text: string) => string): void {
    this.mask = mask;
  }

  /** `text` with the build's secret values hidden. */
  masked(text: string): string {
    return this.mask(text);
  }

  line(text: string): void {
    for (const l of this.mask(text).replace(/\r?\n$/, '').split(/\r?\n/)) {
      this.recent.push(l);
      if (this.recent.length > RECENT) this.recent.shift();
      this.push(['line', l]);
    }
  }

  step(step: BuildStep): void {
    const json = JSON.stringify(step);
    if (this.steps.get(step.index) === json) return; // a step reported again unchanged
    this.steps.set(step.index, json);
    this.push(['step', { ...step }]);
  }

  status(status: BuildStatus, extra: { attempt?: number; worker?: string } = {}): void {
    this.push(['status', { status, ...extra }]);
  }

  /** The final entry; resolves once it and everything before it are written. */
  end(status: BuildStatus, extra: { imageDigest?: string; error?: BuildFailure } = {}): Promise<void> {
    this.push(['end', { status, ...extra }]);
    return this.flush();
  }

  /** The last lines seen, for a failure's summary. */
  lastLines(n = RECENT): string[] {
    return this.recent.slice(-n);
  }

  flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending;
    this.pending = [];
    if (batch.length) this.chain = this.chain.then(() => this.write(batch)).catch((err: unknown) => void (this.lastError = err));
    return this.chain;
  }

  private push(entry: Pending): void {
    this.pending.push(entry);
    if (this.pending.length >= FLUSH_COUNT) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), FLUSH_MS);
  }

  private async write(batch: Pending[]): Promise<void> {
    const p = this.redis.pipeline();
    for (const [t, d] of batch) {
      p.xadd(this.streamKey, 'MAXLEN', '~', MAX_LOG_ENTRIES, '*', 't', t, 'd', typeof d === 'string' ? d : JSON.stringify(d));
      if (t === 'step') p.hset(this.stepsKey, String(d.index), JSON.stringify(d));
    }
    const results = await p.exec();
    const failed = results?.find(([err]) => err);
    if (failed) throw failed[0];
  }
}

function parseEntry(id: string, fields: string[]): LogEntry {
  const f: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!;
  const d = f.d ?? '';
  switch (f.t) {
    case 'step':
      return { id, type: 'step', step: JSON.parse(d) as BuildStep };
    case 'status':
      return { id, type: 'status', ...(JSON.parse(d) as { status: BuildStatus }) };
    case 'end':
      return { id, type: 'end', ...(JSON.parse(d) as { status: BuildStatus }) };
    default:
      return { id, type: 'line', text: d };
  }
}

/** Every entry written so far, oldest first, read in pages. */
export async function* readLog(redis: Redis, prefix: string, id: string, from = '-'): AsyncGenerator<LogEntry> {
  const key = keys(prefix).log(id);
  let start = from;
  for (;;) {
    const page = await redis.xrange(key, start, '+', 'COUNT', 1000);
    for (const [entryId, fields] of page) yield parseEntry(entryId, fields);
    if (page.length < 1000) return;
    start = `(${page[page.length - 1]![0]}`;
  }
}

export interface FollowOptions {
  /** Stream id to start after ('0' = from the beginning). */
  after?: string;
  /** Asked whenever nothing arrived for `blockMs`: true ends the follow (a build that ended without an `end` entry). */
  finished: () => Promise<boolean>;
  blockMs?: number;
}

/**
 * Entries as they are written, until the `end` entry. `redis` must be a
 * connection of the follower's own: XREAD BLOCK holds it. Disconnecting it
 * ends the generator (that is how a follower that went away is stopped).
 */
export async function* followLog(redis: Redis, prefix: string, id: string, opts: FollowOptions): AsyncGenerator<LogEntry> {
  const key = keys(prefix).log(id);
  let after = opts.after ?? '0';
  for (;;) {
    let reply: [string, [string, string[]][]][] | null;
    try {
      reply = (await redis.xread('COUNT', 1000, 'BLOCK', opts.blockMs ?? 2000, 'STREAMS', key, after)) as typeof reply;
    } catch (err) {
      if (redis.status === 'end' || redis.status === 'close') return;
      throw err;
    }
    const entries = reply?.[0]?.[1] ?? [];
    for (const [entryId, fields] of entries) {
      after = entryId;
      const entry = parseEntry(entryId, fields);
      yield entry;
      if (entry.type === 'end') return;
    }
    if (entries.length === 0 && (await opts.finished())) {
      // The end entry may have landed between the read and the check.
      for (const [entryId, fields] of await redis.xrange(key, `(${after}`, '+')) yield parseEntry(entryId, fields);
      return;
    }
  }
}
