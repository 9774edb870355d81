/*
 * POST /hooks/git: push events from GitHub, Gitea/Gogs and GitLab start builds.
 *
 *   provider  event header       proof                                  delivery id
 *   GitHub    X-GitHub-Event     X-Hub-Signature-256: sha256=HMAC(body)  X-GitHub-Delivery
 *   Gitea     X-Gitea-Event      X-Gitea-Signature: HMAC(body) (hex)     X-Gitea-Delivery
 *   Gogs      X-Gogs-Event       X-Gogs-Signature: HMAC(body) (hex)      X-Gogs-Delivery
 *   GitLab    X-Gitlab-Event     X-Gitlab-Token: the secret itself       X-Gitlab-Event-UUID
 *
 * Order: no proof → 401; repository without trigger (and no global secret to
 * check against) → 404; proof that matches no secret → 401; a delivery id seen
 * before → 409 (it is authentic but a replay: Conflict, not Forbidden); then the
 * push is mapped to triggers and queued (202). The clone happens on the worker,
 * so a commit that does not exist fails that build, with the reason in its log.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import express, { type Request, type RequestHandler, type Response } from 'express';
import type { Redis } from 'ioredis';
import type { BuildQueue } from './queue.js';
import type { BuildRecord } from './records.js';
import { keys } from './redis.js';
import { expandTag, isUrl, triggersForRepository, type Trigger } from './triggers.js';

export interface HookOptions {
  queue: BuildQueue;
  /** Secret for repositories whose trigger has none of its own. */
  secret?: string;
  /** How long a delivery id is remembered (seconds). Default 7 days. */
  deliveryTtl?: number;
}

interface Delivery {
  event: string;
  push: boolean;
  ping: boolean;
  id: string | undefined;
  check: (secret: string) => boolean;
}

const HEX = /^[0-9a-f]{64}$/i;

function hmacCheck(body: Buffer, given: string | undefined): (secret: string) => boolean {
  const hex = given?.replace(/^sha256=/, '') ?? '';
  if (!HEX.test(hex)) return () => false;
  const got = Buffer.from(hex, 'hex');
  return (secret) => timingSafeEqual(createHmac('sha256', secret).update(body).digest(), got);
}

/** Which provider sent it, and how to check it; null when it carries no proof at all. */
function delivery(req: Request, body: Buffer): Delivery | null {
  const h = (name: string) => req.get(name) || undefined;
  if (h('x-gitlab-event')) {
    const token = h('x-gitlab-token');
    if (!token) return null;
    const digest = createHash('sha256').update(token).digest();
    const event = h('x-gitlab-event')!;
    return {
      event,
      push: event === 'Push Hook',
      ping: false,
      id: h('x-gitlab-event-uuid'),
      check: (secret) => timingSafeEqual(createHash('sha256').update(secret).digest(), digest),
    };
  }
  for (const p of ['gitea', 'gogs']) {
    const event = h(`x-${p}-event`);
    if (!event) continue;
    const sig = h(`x-${p}-signature`) ?? h('x-hub-signature-256');
    if (!sig) return null;
    return { event, push: event === 'push', ping: false, id: h(`x-${p}-delivery`), check: hmacCheck(body, sig) };
  }
  const sig = h('x-hub-signature-256');
  if (!sig) return null;
  const event = h('x-github-event') ?? '';
  return { event, push: event === 'push', ping: event === 'ping', id: h('x-github-delivery'), check: hmacCheck(body, sig) };
}

interface PushEvent {
  ref?: string;
  after?: string;
  checkout_sha?: string | null;
  deleted?: boolean;
  repository?: { full_name?: string; clone_url?: string; html_url?: string; ssh_url?: string; git_url?: string; url?: string; git_http_url?: string; homepage?: string };
  project?: { path_with_namespace?: string; git_http_url?: string; git_ssh_url?: string; web_url?: string; http_url?: string };
}

function parsePayload(req: Request, body: Buffer): PushEvent {
  let text = body.toString('utf8');
  if (req.is('application/x-www-form-urlencoded')) text = new URLSearchParams(text).get('payload') ?? '';
  const value = JSON.parse(text) as unknown;
  if (typeof value !== 'object' || value === null) throw new Error('not an object');
  return value as PushEvent;
}

function repositoryNames(p: PushEvent): string[] {
  const r = p.repository ?? {};
  const g = p.project ?? {};
  return [r.full_name, r.clone_url, r.html_url, r.ssh_url, r.git_url, r.url, r.git_http_url, r.homepage, g.path_with_namespace, g.git_http_url, g.git_ssh_url, g.web_url, g.http_url].filter(
    (s): s is string => typeof s === 'string' && s !== '',
  );
}

const reply = (res: Response, status: number, body: Record<string, unknown>) => res.status(status).json(body);
const ZERO_SHA = /^0+$/;

export function gitHookHandlers(opts: HookOptions): RequestHandler[] {
  const { queue } = opts;
  const redis: Redis = queue.redis;
  const handle: RequestHandler = async (req, res) => {
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const d = delivery(req, body);
    if (!d) return void reply(res, 401, { error: 'unsigned webhook: X-Hub-Signature-256 (or X-Gitea-Signature, X-Gitlab-Token) is required' });
    let payload: PushEvent;
    try {
      payload = parsePayload(req, body);
    } catch (err) {
      return void reply(res, 400, { error: `the webhook payload is not JSON: ${(err as Error).message}` });
    }
    const names = repositoryNames(payload);
    const triggers = await triggersForRepository(redis, queue.prefix, names);
    const secrets = [...new Set(triggers.map((t) => t.secret).filter((s): s is string => !!s))];
    if (opts.secret) secrets.push(opts.secret);
    if (triggers.length === 0 && !opts.secret) return void reply(res, 404, { error: `no build trigger for repository ${names[0] ?? '(none named)'}` });
    const matched = secrets.find((s) => d.check(s));
    if (matched === undefined) return void reply(res, 401, { error: 'the webhook signature does not match the configured secret' });
    if (d.ping) return void reply(res, 200, { ok: true });
    if (triggers.length === 0) return void reply(res, 404, { error: `no build trigger for repository ${names[0] ?? '(none named)'}` });
    if (!d.id) return void reply(res, 400, { error: 'the webhook has no delivery id header (X-GitHub-Delivery, X-Gitea-Delivery, X-Gitlab-Event-UUID)' });
    const deliveryKey = keys(queue.prefix).delivery(d.id);
    const fresh = await redis.set(deliveryKey, new Date().toISOString(), 'EX', opts.deliveryTtl ?? 7 * 86400, 'NX');
    if (fresh !== 'OK') return void reply(res, 409, { error: `delivery ${d.id} was already received; replays are refused` });
    try {
      const builds = d.push ? await enqueuePush(queue, payload, triggers.filter((t) => (t.secret ?? opts.secret) === matched)) : null;
      if (!builds) return void reply(res, 202, { ignored: `event ${d.event || '(none)'} does not start builds` });
      if (typeof builds === 'string') return void reply(res, 202, { ignored: builds });
      reply(res, 202, { builds: builds.map((b) => ({ id: b.id, tags: b.spec.tags, sha: b.source.type === 'git' ? b.source.sha : undefined })) });
    } catch (err) {
      await redis.del(deliveryKey).catch(() => undefined); // let the sender's redelivery through
      reply(res, 503, { error: `could not queue the build: ${(err as Error).message}` });
    }
  };
  return [express.raw({ type: () => true, limit: '25mb' }), handle];
}

/** Queues one build per trigger of the pushed branch; a string says why nothing was queued. */
async function enqueuePush(queue: BuildQueue, p: PushEvent, triggers: Trigger[]): Promise<BuildRecord[] | string> {
  const ref = p.ref ?? '';
  if (!ref.startsWith('refs/heads/')) return `${ref || 'no ref'} is not a branch`;
  const branch = ref.slice('refs/heads/'.length);
  const sha = (p.after || p.checkout_sha || '').toLowerCase();
  if (p.deleted || !sha || ZERO_SHA.test(sha)) return `branch ${branch} was deleted`;
  const mine = triggers.filter((t) => t.branch === branch);
  if (mine.length === 0) return `no trigger for branch ${branch}`;
  const cloneUrl = p.repository?.clone_url ?? p.project?.git_http_url ?? p.repository?.git_http_url ?? p.repository?.url;
  const out: BuildRecord[] = [];
  for (const t of mine) {
    const url = isUrl(t.repo) ? t.repo : cloneUrl;
    if (!url) throw new Error(`the push event names no clone URL for ${t.repo}`);
    const spec = {
      dockerfile: t.dockerfile,
      tags: t.tags.map((tag) => expandTag(tag, { branch, sha })),
      buildArgs: {},
      noCache: false,
      network: 'none' as const,
      secrets: [],
      labels: { 'org.opencontainers.image.revision': sha, 'org.opencontainers.image.source': url },
    };
    out.push(await queue.enqueue(spec, { type: 'git', url, sha, ref, repository: t.repo }, 'hook'));
  }
  return out;
}
