/*
 * Build records in Redis: one hash per build (scalar fields as strings, nested
 * ones as JSON), its steps in a second hash, and an index sorted by creation.
 * A record is the answer to GET /api/builds/:id; the log is a stream beside it
 * (logs.ts). Terminal states are final: `finishRecord` never overwrites one, so
 * a cancel that wins a race with the worker stays a cancel.
 *
 * A record's hash also holds the sha256 of the build's two capability tokens (never
 * the tokens, and never returned by getRecord): the worker's, which fetches and
 * deletes the context and fetches the secrets, and the submitter's, which cancels.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { BuildRequest, BuildStep } from './types.js';
import { keys } from './redis.js';

export type BuildStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
export const TERMINAL: readonly BuildStatus[] = ['succeeded', 'failed', 'cancelled'];
export const isTerminal = (s: BuildStatus): boolean => TERMINAL.includes(s);

/**
 * What to build, as the client asked (BuildRequest without the worker's paths), with
 * the ids of the build's secrets only: their values are kept apart, sealed.
 */
export type BuildSpec = Omit<BuildRequest, 'id' | 'contextDir' | 'secrets'> & { secrets: string[] };

/** Where the worker gets the context from. */
export type BuildSource =
  | { type: 'upload'; url: string; size: number; digest: string }
  | { type: 'git'; url: string; sha: string; ref: string; repository: string };

export interface BuildFailure {
  message: string;
  kind: 'user' | 'infrastructure' | 'cancelled';
  exitCode?: number;
  line?: number;
  lastLines?: string[];
}

export interface BuildRecord {
  id: string;
  status: BuildStatus;
  spec: BuildSpec;
  source: BuildSource;
  /** Who asked: `api` (slipway build, POST /api/builds) or `hook` (a git push). */
  origin: 'api' | 'hook';
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  /** From the first start to the end. */
  durationMs?: number;
  /** From creation to the first start. */
  queuedMs?: number;
  /** Attempts started so far (retries and stall recoveries included). */
  attempts: number;
  maxAttempts: number;
  worker?: string;
  steps: BuildStep[];
  cacheHits: number;
  imageDigest?: string;
  error?: BuildFailure;
  cancelRequested: boolean;
}

type Stored = Omit<BuildRecord, 'steps'>;

export type TokenKind = 'worker' | 'cancel';
const TOKEN_FIELDS: Record<TokenKind, string> = { worker: 'workerTokenSha256', cancel: 'cancelTokenSha256' };
const HIDDEN_FIELDS = new Set(Object.values(TOKEN_FIELDS));

/** A capability token: 32 random bytes. */
export const newToken = (): string => randomBytes(32).toString('base64url');
const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

/** True when `token` is the build's token of that kind (compared in constant time). */
export async function tokenMatches(redis: Redis, prefix: string, id: string, kind: TokenKind, token: string | undefined): Promise<boolean> {
  if (!token) return false;
  const stored = await redis.hget(keys(prefix).record(id), TOKEN_FIELDS[kind]);
  if (!stored || !/^[0-9a-f]{64}$/.test(stored)) return false;
  return timingSafeEqual(sha256(token), Buffer.from(stored, 'hex'));
}
const JSON_FIELDS = new Set(['spec', 'source', 'error']);
const NUMBER_FIELDS = new Set(['durationMs', 'queuedMs', 'attempts', 'maxAttempts', 'cacheHits']);
const BOOLEAN_FIELDS = new Set(['cancelRequested']);

function encode(patch: Partial<Stored>): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(patch)) {
    if (v === undefined) continue;
    out.push(k, JSON_FIELDS.has(k) ? JSON.stringify(v) : BOOLEAN_FIELDS.has(k) ? (v ? '1' : '0') : String(v));
  }
  return out;
}

function decode(hash: Record<string, string>): Stored {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(hash)) {
    if (HIDDEN_FIELDS.has(k)) continue;
    out[k] = JSON_FIELDS.has(k) ? JSON.parse(v) : NUMBER_FIELDS.has(k) ? Number(v) : BOOLEAN_FIELDS.has(k) ? v === '1' : v;
  }
  return out as unknown as Stored;
}

export async function createRecord(redis: Redis, prefix: string, record: Omit<BuildRecord, 'steps'>, tokens: Record<TokenKind, string>): Promise<void> {
  const k = keys(prefix);
  // A counter, not the time, orders the index: two builds created in the same ms keep their order.
  const seq = await redis.incr(k.sequence);
  const hashed = Object.entries(tokens).flatMap(([kind, token]) => [TOKEN_FIELDS[kind as TokenKind], sha256(token).toString('hex')]);
  await redis.multi().hset(k.record(record.id), ...encode(record), ...hashed).zadd(k.index, seq, record.id).exec();
}

export async function getRecord(redis: Redis, prefix: string, id: string): Promise<BuildRecord | null> {
  const k = keys(prefix);
  const [hash, steps] = await Promise.all([redis.hgetall(k.record(id)), redis.hvals(k.steps(id))]);
  if (!hash || !hash.id) return null;
  const parsed = steps.map((s) => JSON.parse(s) as BuildStep).sort((a, b) => a.index - b.index);
  return { ...decode(hash), steps: parsed };
}

/** Removes all but the newest `keep` records, with their steps and logs. */
export async function pruneRecords(redis: Redis, prefix: string, keep: number): Promise<number> {
  const k = keys(prefix);
  if ((await redis.zcard(k.index)) <= keep) return 0;
  const old = await redis.zrange(k.index, 0, String(-(keep + 1)));
  if (old.length === 0) return 0;
  await redis.multi().del(...old.flatMap((id) => [k.record(id), k.steps(id), k.log(id), k.secrets(id)])).zrem(k.index, ...old).exec();
  return old.length;
}

/** Newest first. */
export async function listRecords(redis: Redis, prefix: string, opts: { limit?: number; offset?: number } = {}): Promise<BuildRecord[]> {
  const offset = opts.offset ?? 0;
  const ids = await redis.zrevrange(keys(prefix).index, offset, offset + (opts.limit ?? 50) - 1);
  const records = await Promise.all(ids.map((id) => getRecord(redis, prefix, id)));
  return records.filter((r): r is BuildRecord => r !== null);
}

/** Updates fields of a record that is not finished; false when it is (or is gone). */
export async function updateRecord(redis: Redis, prefix: string, id: string, patch: Partial<Stored>): Promise<boolean> {
  const fields = encode(patch);
  if (fields.length === 0) return false;
  const done = await redis.eval(UPDATE_UNLESS_TERMINAL, 1, keys(prefix).record(id), ...fields);
  return done === 1;
}

/** Moves a record to a terminal state once; false when it already was in one. */
export async function finishRecord(
  redis: Redis,
  prefix: string,
  id: string,
  status: Exclude<BuildStatus, 'queued' | 'running'>,
  patch: Partial<Stored> = {},
): Promise<boolean> {
  const now = new Date();
  const hash = await redis.hmget(keys(prefix).record(id), 'startedAt');
  const started = hash[0] ? Date.parse(hash[0]) : undefined;
  const durationMs = started === undefined ? undefined : now.getTime() - started;
  const finished = await updateRecord(redis, prefix, id, { ...patch, status, finishedAt: now.toISOString(), durationMs });
  // An ended build's secrets are of no more use to anyone.
  if (finished) await redis.del(keys(prefix).secrets(id));
  return finished;
}

/** Flags a cancel (the worker polls it too, in case the pub/sub message is missed). */
export async function requestCancel(redis: Redis, prefix: string, id: string): Promise<boolean> {
  return updateRecord(redis, prefix, id, { cancelRequested: true });
}

/*
 * KEYS[1] the record hash; ARGV field/value pairs. Nothing is written when the
 * record is missing or already succeeded/failed/cancelled.
 */
const UPDATE_UNLESS_TERMINAL = `
local s = redis.call('HGET', KEYS[1], 'status')
if not s or s == 'succeeded' or s == 'failed' or s == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1`;
