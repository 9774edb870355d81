/*
 * Build triggers: which git repository + branch builds which image tag(s) from
 * which Dockerfile, kept in one Redis hash (field "<repo>#<branch>") and
 * managed with `slipway trigger add|ls|rm`. A repository is named either by a
 * URL (any of the clone/web URLs a push event carries) or by its full name
 * ("owner/name", GitLab's path_with_namespace); both are compared normalised.
 *
 * Nothing secret is kept in clear in the hash, which a reader of Redis sees
 * whole: the webhook secret is sealed (seal.ts; aad: the field), and the
 * userinfo of an http(s) clone URL (`https://user:token@host/x.git`) is split
 * off the URL and sealed apart (aad: the field + "#credentials"). Triggers
 * written in clear by older versions are sealed the first time a reader holding
 * the key (the hook handler, `slipway trigger ls|add`) meets them.
 */
import type { Redis } from 'ioredis';
import { splitCredentials } from './redact.js';
import { keys } from './redis.js';
import { isSealed, seal, unseal } from './seal.js';

/** A trigger as stored and listed: nothing in it is a secret in clear. */
export interface Trigger {
  /** The repository; a URL never carries credentials here. */
  repo: string;
  branch: string;
  /** `HOST:PORT/repo:tag`; `{branch}`, `{sha}` and `{short}` are filled from the push. */
  tags: string[];
  dockerfile: string;
  /** Webhook secret for this repository (else the registry's configured one), sealed. */
  secret?: string;
  /** `user:password` for cloning, split off an http(s) repo URL, sealed. */
  credentials?: string;
  createdAt: string;
}

/** What `slipway trigger add` is given: the secret in clear, credentials maybe inside the URL. */
export interface TriggerInput {
  repo: string;
  branch: string;
  tags: string[];
  dockerfile: string;
  secret?: string;
}

/** The installation's secrets key, loaded only when a secret has to be sealed or opened. */
export type SecretsKeySource = Buffer | (() => Promise<Buffer>);

const keyOf = (source: SecretsKeySource): Promise<Buffer> => (Buffer.isBuffer(source) ? Promise.resolve(source) : source());

/** "github.com/acme/app" for any of its URLs; names lower-cased. */
export function normalizeRepo(repo: string): string {
  let s = repo.trim();
  const scp = /^[\w.-]+@([\w.-]+):(.+)$/.exec(s);
  if (scp) s = `${scp[1]}/${scp[2]}`;
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) {
    try {
      const u = new URL(s);
      s = `${u.host}${u.pathname}`;
    } catch {
      // not a URL after all: compared as a name
    }
  }
  return s.replace(/\/+$/, '').replace(/\.git$/, '').replace(/\/+$/, '').toLowerCase();
}

const field = (repo: string, branch: string): string => `${normalizeRepo(repo)}#${branch}`;

/** `HOST[:PORT]/name[:tag]` with placeholders allowed in the tag. */
const TAG_RE = /^[a-z0-9.-]+(:\d+)?\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(:[\w.{}-]{1,128})?$/;

export function validateTrigger(t: TriggerInput): void {
  if (!t.repo.trim()) throw new Error('a trigger needs --repo (a clone URL or owner/name)');
  if (!t.branch.trim() || /\s/.test(t.branch)) throw new Error(`invalid branch ${JSON.stringify(t.branch)}`);
  if (t.tags.length === 0) throw new Error('a trigger needs --tag HOST:PORT/repo:tag');
  for (const tag of t.tags) {
    if (!TAG_RE.test(tag)) throw new Error(`invalid image tag ${JSON.stringify(tag)}: use HOST:PORT/repo:tag ({branch}, {sha}, {short} allowed in the tag)`);
  }
  if (t.dockerfile.startsWith('/') || t.dockerfile.split('/').includes('..')) {
    throw new Error(`--dockerfile must be a path inside the repository: ${t.dockerfile}`);
  }
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(t.repo)?.[1];
  if (scheme && !/^https?$/i.test(scheme) && splitCredentials(t.repo).credentials?.password) {
    throw new Error(`--repo: git does not use a password in a ${scheme}:// URL; use an https URL (user:token@) or an SSH key`);
  }
}

export async function addTrigger(redis: Redis, prefix: string, input: TriggerInput, key?: SecretsKeySource): Promise<Trigger> {
  validateTrigger(input);
  const { secret, ...plain } = input;
  const trigger = await sealTrigger({ ...plain, createdAt: new Date().toISOString() }, secret, key);
  await redis.hset(keys(prefix).triggers, field(trigger.repo, trigger.branch), JSON.stringify(trigger));
  return trigger;
}

/** Every trigger; with `key`, one still holding a secret in clear is sealed in Redis first. */
export async function listTriggers(redis: Redis, prefix: string, key?: SecretsKeySource): Promise<Trigger[]> {
  const all = await redis.hgetall(keys(prefix).triggers);
  const out: Trigger[] = [];
  for (const [name, stored] of Object.entries(all)) {
    let t = JSON.parse(stored) as Trigger;
    if (key && inClear(t)) {
      t = await sealTrigger(t, t.secret && !isSealed(t.secret) ? t.secret : undefined, key);
      // Only over the value read: a trigger re-added meanwhile is left as it is now.
      await redis.eval(REPLACE_IF_UNCHANGED, 1, keys(prefix).triggers, name, stored, JSON.stringify(t));
    }
    out.push(t);
  }
  return out.sort((a, b) => `${a.repo}#${a.branch}`.localeCompare(`${b.repo}#${b.branch}`));
}

/** The webhook secret in clear; undefined when the trigger has none of its own. */
export function triggerSecret(t: Trigger, key: Buffer): string | undefined {
  return t.secret ? unseal(key, t.secret, field(t.repo, t.branch)).toString() : undefined;
}

/** The clone credentials as `user:password`; undefined when the URL had none. */
export function triggerCredentials(t: Trigger, key: Buffer): string | undefined {
  return t.credentials ? unseal(key, t.credentials, `${field(t.repo, t.branch)}#credentials`).toString() : undefined;
}

const inClear = (t: Trigger): boolean => (!!t.secret && !isSealed(t.secret)) || splitRepo(t.repo).credentials !== undefined;

/** The trigger with `clearSecret` sealed into it and the credentials of its URL split off and sealed. */
async function sealTrigger(t: Trigger, clearSecret: string | undefined, key: SecretsKeySource | undefined): Promise<Trigger> {
  const { repo, credentials } = splitRepo(t.repo);
  if (!clearSecret && !credentials) return t;
  if (!key) throw new Error('storing a webhook secret or clone credentials needs the secrets key (SLIPWAY_SECRETS_KEY_FILE)');
  const k = await keyOf(key);
  const name = field(repo, t.branch);
  return {
    ...t,
    repo,
    ...(clearSecret ? { secret: seal(k, clearSecret, name) } : {}),
    ...(credentials ? { credentials: seal(k, credentials, `${name}#credentials`) } : {}),
  };
}

/** An http(s) URL without its userinfo, and the userinfo as `user:password`. */
function splitRepo(repo: string): { repo: string; credentials?: string } {
  if (!/^https?:\/\//i.test(repo)) return { repo };
  const split = splitCredentials(repo);
  return split.credentials ? { repo: split.url, credentials: `${split.credentials.username}:${split.credentials.password}` } : { repo };
}

/*
 * KEYS[1] the triggers hash; ARGV[1] a field, ARGV[2] the value read, ARGV[3]
 * its replacement, written only if the field still holds ARGV[2].
 */
const REPLACE_IF_UNCHANGED = `
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1`;

/** Removes the trigger(s) of a repository (one branch, or all when `branch` is absent); returns how many. */
export async function removeTrigger(redis: Redis, prefix: string, repo: string, branch?: string): Promise<number> {
  if (branch !== undefined) return redis.hdel(keys(prefix).triggers, field(repo, branch));
  const mine = (await listTriggers(redis, prefix)).filter((t) => normalizeRepo(t.repo) === normalizeRepo(repo));
  return mine.length ? redis.hdel(keys(prefix).triggers, ...mine.map((t) => field(t.repo, t.branch))) : 0;
}

/** Triggers whose repository is any of `names` (URLs or full names); all branches. */
export async function triggersForRepository(redis: Redis, prefix: string, names: string[], key?: SecretsKeySource): Promise<Trigger[]> {
  const wanted = new Set(names.filter(Boolean).map(normalizeRepo));
  return (await listTriggers(redis, prefix, key)).filter((t) => wanted.has(normalizeRepo(t.repo)));
}

/** The tag with the push's placeholders filled. */
export function expandTag(tag: string, push: { branch: string; sha: string }): string {
  const branch = push.branch.toLowerCase().replace(/[^\w.-]/g, '-');
  return tag.replaceAll('{branch}', branch).replaceAll('{sha}', push.sha).replaceAll('{short}', push.sha.slice(0, 12));
}

export function isUrl(repo: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(repo) || /^[\w.-]+@[\w.-]+:/.test(repo);
}
