/*
 * POST /hooks/git: push events from GitHub, Gitea/Gogs and GitLab start builds.
 *
 *   provider  event header       proof                                  delivery id
 *   GitHub    X-GitHub-Event     X-Hub-Signature-256: sha256=HMAC(body)  X-GitHub-Delivery
 *   Gitea     X-Gitea-Event      X-Gitea-Signature: HMAC(body) (hex)     X-Gitea-Delivery
 *   Gogs      X-Gogs-Event       X-Gogs-Signature: HMAC(body) (hex)      X-Gogs-Delivery
 *   GitLab    X-Gitlab-Event     X-Gitlab-Token: the secret itself       X-Gitlab-Event-UUID
 *
 * Order: a declared body over the limit → 413 before any byte is read; a body
 * that stalls → 408. No proof, or proof that matches no secret of the named
 * repository's triggers nor the global one → 401, one answer for all of them,
 * so an unauthenticated caller learns nothing about which repositories have
 * triggers. Authenticated: no trigger for the repository → 404; a delivery id
 * seen before → 409 (authentic but a replay: Conflict, not Forbidden); the same
 * body again under a new delivery id within the replay window → 200, marked a
 * duplicate, nothing queued (the signature covers the body, not the delivery
 * id, so a captured delivery could otherwise be replayed at will); then the push
 * is mapped to triggers and queued (202). The clone happens on the worker, so a
 * commit that does not exist fails that build, with the reason in its log.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Request, RequestHandler, Response } from 'express';
import type { Redis } from 'ioredis';
import type { BuildQueue, SubmittedBuild } from './queue.js';
import { splitCredentials } from './redact.js';
import { keys } from './redis.js';
import { loadSecretsKey, secretsKeyFile } from './seal.js';
import { expandTag, isUrl, triggerCredentials, triggerSecret, triggersForRepository, type Trigger } from './triggers.js';
import { GIT_CREDENTIALS_SECRET } from './types.js';

export interface HookOptions {
  queue: BuildQueue;
  /** Secret for repositories whose trigger has none of its own. */
  secret?: string;
  /** Opens trigger secrets and clone credentials; default: the key file (seal.ts), read when first needed. */
  secretsKey?: Buffer;
  /** How long a delivery id is remembered (seconds). Default 7 days. */
  deliveryTtl?: number;
  /** How long a body already received is refused under another delivery id (seconds). Default 24 h. */
  replayWindow?: number;
  /** Largest body accepted (bytes). Default 25 MiB. */
  bodyLimit?: number;
  /** A body that sends nothing for this long is cut with 408 (ms). Default 30 s. */
  bodyIdleMs?: number;
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
/** The one answer to every request not proven to come from a configured sender. */
const UNAUTHENTICATED = {
  error: 'the webhook is not signed with the secret configured for its repository (X-Hub-Signature-256, X-Gitea-Signature, X-Gogs-Signature or X-Gitlab-Token)',
};
/** Checked when no secret is configured at all, so that case costs what a mismatch does. */
const NO_SECRET = randomBytes(32).toString('hex');

export function gitHookHandlers(opts: HookOptions): RequestHandler[] {
  const { queue } = opts;
  const redis: Redis = queue.redis;
  let loading: Promise<Buffer> | undefined;
  const key = (): Promise<Buffer> => {
    if (opts.secretsKey) return Promise.resolve(opts.secretsKey);
    // Read once; a failure (an unreadable key file) is tried again on the next request.
    return (loading ??= loadSecretsKey(secretsKeyFile()).catch((err: unknown) => {
      loading = undefined;
      throw err;
    }));
  };
  const handle: RequestHandler = async (req, res) => {
    const body = req.body as Buffer;
    const d = delivery(req, body);
    if (!d) return void reply(res, 401, UNAUTHENTICATED);
    let payload: PushEvent;
    try {
      payload = parsePayload(req, body);
    } catch (err) {
      return void reply(res, 400, { error: `the webhook payload is not JSON: ${(err as Error).message}` });
    }
    const names = repositoryNames(payload);
    const triggers = await triggersForRepository(redis, queue.prefix, names, key);
    const own = await openSecrets(triggers, key);
    const secrets = [...new Set(own.values()), ...(opts.secret ? [opts.secret] : [])];
    const matched = secrets.find((s) => d.check(s));
    if (matched === undefined) {
      if (secrets.length === 0) d.check(NO_SECRET);
      return void reply(res, 401, UNAUTHENTICATED);
    }
    if (d.ping) return void reply(res, 200, { ok: true });
    if (triggers.length === 0) return void reply(res, 404, { error: `no build trigger for repository ${names[0] ?? '(none named)'}` });
    if (!d.id) return void reply(res, 400, { error: 'the webhook has no delivery id header (X-GitHub-Delivery, X-Gitea-Delivery, X-Gitlab-Event-UUID)' });
    const k = keys(queue.prefix);
    const deliveryKey = k.delivery(d.id);
    const fresh = await redis.set(deliveryKey, new Date().toISOString(), 'EX', opts.deliveryTtl ?? 7 * 86400, 'NX');
    if (fresh !== 'OK') return void reply(res, 409, { error: `delivery ${d.id} was already received; replays are refused` });
    const bodyKey = k.hookBody(createHash('sha256').update(body).digest('hex'));
    if ((await redis.set(bodyKey, d.id, 'EX', opts.replayWindow ?? 86400, 'NX')) !== 'OK') {
      const first = (await redis.get(bodyKey)) ?? 'an earlier one';
      return void reply(res, 200, { duplicate: `this payload was already received (delivery ${first}); nothing is queued for delivery ${d.id}` });
    }
    try {
      const mine = triggers.filter((t) => (t.secret ? own.get(t) : opts.secret) === matched);
      const builds = d.push ? await enqueuePush(queue, payload, mine, key) : null;
      if (!builds) return void reply(res, 202, { ignored: `event ${d.event || '(none)'} does not start builds` });
      if (typeof builds === 'string') return void reply(res, 202, { ignored: builds });
      reply(res, 202, { builds: builds.map((b) => ({ id: b.id, tags: b.spec.tags, sha: b.source.type === 'git' ? b.source.sha : undefined })) });
    } catch (err) {
      await redis.del(deliveryKey, bodyKey).catch(() => undefined); // let the sender's redelivery through
      reply(res, 503, { error: `could not queue the build: ${(err as Error).message}` });
    }
  };
  return [readBody(opts.bodyLimit ?? 25 << 20, opts.bodyIdleMs ?? 30_000), handle];
}

/** Each trigger's own secret, opened; one that does not open is left out, with a word to the operator. */
async function openSecrets(triggers: Trigger[], key: () => Promise<Buffer>): Promise<Map<Trigger, string>> {
  const out = new Map<Trigger, string>();
  for (const t of triggers.filter((t) => t.secret)) {
    try {
      out.set(t, triggerSecret(t, await key())!);
    } catch (err) {
      console.error(`slipway: the webhook secret of trigger ${t.repo} ${t.branch} cannot be used: ${(err as Error).message}; add the trigger again`);
    }
  }
  return out;
}

/**
 * The raw body into req.body, bounded: a declared length over `limit` is
 * answered 413 before any of it is read, a body growing past it is cut, and one
 * that sends nothing for `idleMs` gets 408. Either way the connection closes.
 */
function readBody(limit: number, idleMs: number): RequestHandler {
  const tooLarge = `the webhook body is over the limit of ${limit} bytes`;
  const refuse = (res: Response, status: number, error: string) => void reply(res.set('Connection', 'close'), status, { error });
  return (req, res, next) => {
    if (Number(req.get('content-length') ?? 0) > limit) return refuse(res, 413, tooLarge);
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = () => {
      clearTimeout(idle);
      req.off('data', onData).off('end', onEnd).off('close', stop);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) return void (stop(), refuse(res, 413, tooLarge));
      chunks.push(chunk);
      idle.refresh();
    };
    const onEnd = () => {
      stop();
      req.body = Buffer.concat(chunks);
      next();
    };
    const idle = setTimeout(() => (stop(), refuse(res, 408, `the webhook body stalled: nothing received for ${idleMs} ms`)), idleMs);
    req.on('data', onData).on('end', onEnd).on('close', stop);
  };
}

/** Queues one build per trigger of the pushed branch; a string says why nothing was queued. */
async function enqueuePush(queue: BuildQueue, p: PushEvent, triggers: Trigger[], key: () => Promise<Buffer>): Promise<SubmittedBuild[] | string> {
  const ref = p.ref ?? '';
  if (!ref.startsWith('refs/heads/')) return `${ref || 'no ref'} is not a branch`;
  const branch = ref.slice('refs/heads/'.length);
  const sha = (p.after || p.checkout_sha || '').toLowerCase();
  if (p.deleted || !sha || ZERO_SHA.test(sha)) return `branch ${branch} was deleted`;
  const mine = triggers.filter((t) => t.branch === branch);
  if (mine.length === 0) return `no trigger for branch ${branch}`;
  const cloneUrl = p.repository?.clone_url ?? p.project?.git_http_url ?? p.repository?.git_http_url ?? p.repository?.url;
  const out: SubmittedBuild[] = [];
  for (const t of mine) {
    // Credentials never travel in the URL (it is shown in records and logs): they go as a build secret.
    const url = splitCredentials(isUrl(t.repo) ? t.repo : (cloneUrl ?? '')).url;
    if (!url) throw new Error(`the push event names no clone URL for ${t.repo}`);
    const credentials = t.credentials ? triggerCredentials(t, await key()) : undefined;
    const spec = {
      dockerfile: t.dockerfile,
      tags: t.tags.map((tag) => expandTag(tag, { branch, sha })),
      buildArgs: {},
      noCache: false,
      network: 'none' as const,
      secrets: [],
      labels: { 'org.opencontainers.image.revision': sha, 'org.opencontainers.image.source': url },
    };
    const secrets = credentials ? [{ id: GIT_CREDENTIALS_SECRET, value: Buffer.from(credentials) }] : [];
    out.push(await queue.enqueue(spec, { type: 'git', url, sha, ref, repository: t.repo }, 'hook', { secrets }));
  }
  return out;
}
