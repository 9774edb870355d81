/*
 * Build triggers: which git repository + branch builds which image tag(s) from
 * which Dockerfile, kept in one Redis hash (field "<repo>#<branch>") and
 * managed with `slipway trigger add|ls|rm`. A repository is named either by a
 * URL (any of the clone/web URLs a push event carries) or by its full name
 * ("owner/name", GitLab's path_with_namespace); both are compared normalised.
 */
import type { Redis } from 'ioredis';
import { keys } from './redis.js';

export interface Trigger {
  repo: string;
  branch: string;
  /** `HOST:PORT/repo:tag`; `{branch}`, `{sha}` and `{short}` are filled from the push. */
  tags: string[];
  dockerfile: string;
  /** Webhook secret for this repository (else the registry's configured one). */
  secret?: string;
  createdAt: string;
}

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

export function validateTrigger(t: Omit<Trigger, 'createdAt'>): void {
  if (!t.repo.trim()) throw new Error('a trigger needs --repo (a clone URL or owner/name)');
  if (!t.branch.trim() || /\s/.test(t.branch)) throw new Error(`invalid branch ${JSON.stringify(t.branch)}`);
  if (t.tags.length === 0) throw new Error('a trigger needs --tag HOST:PORT/repo:tag');
  for (const tag of t.tags) {
    if (!TAG_RE.test(tag)) throw new Error(`invalid image tag ${JSON.stringify(tag)}: use HOST:PORT/repo:tag ({branch}, {sha}, {short} allowed in the tag)`);
  }
  if (t.dockerfile.startsWith('/') || t.dockerfile.split('/').includes('..')) {
    throw new Error(`--dockerfile must be a path inside the repository: ${t.dockerfile}`);
  }
}

export async function addTrigger(redis: Redis, prefix: string, t: Omit<Trigger, 'createdAt'>): Promise<Trigger> {
  validateTrigger(t);
  const trigger: Trigger = { ...t, createdAt: new Date().toISOString() };
  await redis.hset(keys(prefix).triggers, field(t.repo, t.branch), JSON.stringify(trigger));
  return trigger;
}

export async function listTriggers(redis: Redis, prefix: string): Promise<Trigger[]> {
  const all = await redis.hvals(keys(prefix).triggers);
  return all.map((v) => JSON.parse(v) as Trigger).sort((a, b) => `${a.repo}#${a.branch}`.localeCompare(`${b.repo}#${b.branch}`));
}

/** Removes the trigger(s) of a repository (one branch, or all when `branch` is absent); returns how many. */
export async function removeTrigger(redis: Redis, prefix: string, repo: string, branch?: string): Promise<number> {
  if (branch !== undefined) return redis.hdel(keys(prefix).triggers, field(repo, branch));
  const mine = (await listTriggers(redis, prefix)).filter((t) => normalizeRepo(t.repo) === normalizeRepo(repo));
  return mine.length ? redis.hdel(keys(prefix).triggers, ...mine.map((t) => field(t.repo, t.branch))) : 0;
}

/** Triggers whose repository is any of `names` (URLs or full names); all branches. */
export async function triggersForRepository(redis: Redis, prefix: string, names: string[]): Promise<Trigger[]> {
  const wanted = new Set(names.filter(Boolean).map(normalizeRepo));
  return (await listTriggers(redis, prefix)).filter((t) => wanted.has(normalizeRepo(t.repo)));
}

/** The tag with the push's placeholders filled. */
export function expandTag(tag: string, push: { branch: string; sha: string }): string {
  const branch = push.branch.toLowerCase().replace(/[^\w.-]/g, '-');
  return tag.replaceAll('{branch}', branch).replaceAll('{sha}', push.sha).replaceAll('{short}', push.sha.slice(0, 12));
}

export function isUrl(repo: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(repo) || /^[\w.-]+@[\w.-]+:/.test(repo);
}
