import { randomUUID } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';

/*
 * Outgoing webhooks in distribution's event envelope. An event is filtered per
 * endpoint when it happens and the survivors are added to one BullMQ queue
 * (`notifications`), one job per event and endpoint: the push that caused it
 * only waits for nothing (the add is not awaited), delivery survives a
 * restart (the jobs are in Redis), and each endpoint retries on its own with
 * BullMQ's exponential backoff.
 */
export const EVENTS_MEDIA_TYPE = 'application/vnd.docker.distribution.events.v1+json';
export const QUEUE_NAME = 'notifications';

export type EventAction = 'push' | 'pull' | 'delete';

export interface EventTarget {
  mediaType: string;
  size: number;
  digest: string;
  length: number;
  repository: string;
  url: string;
  tag?: string;
}

export interface RegistryEvent {
  id: string;
  timestamp: string;
  action: EventAction;
  target: EventTarget;
  request: { id: string; addr: string; host: string; method: string; useragent: string };
  actor: Record<string, never>;
  source: { addr: string; instanceID: string };
}

export interface Endpoint {
  name: string;
  url: string;
  headers: Record<string, string>;
  /** Per attempt, ms. */
  timeout: number;
  /** Attempts after the first. */
  retries: number;
  /** First retry delay, ms; doubles each time. */
  backoff: number;
  ignoredMediaTypes: string[];
  actions: EventAction[];
}

export interface NotificationSettings {
  endpoints: Endpoint[];
  /** BullMQ key prefix; lets several registries (or tests) share one Redis. */
  queuePrefix: string;
}

const ACTIONS: EventAction[] = ['push', 'pull', 'delete'];

/** `500ms`, `5s`, `1m` or a number of ms. */
function duration(value: unknown, where: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value === 'number' && value >= 0) return value;
  const m = typeof value === 'string' ? /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(value.trim()) : null;
  if (!m) throw new Error(`${where}: ${JSON.stringify(value)} is not a duration (use 500ms, 5s, 1m or milliseconds)`);
  return Number(m[1]) * (m[2] === 's' ? 1000 : m[2] === 'm' ? 60_000 : 1);
}

function stringList(value: unknown, where: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string')) throw new Error(`${where}: expected a list of strings`);
  return value as string[];
}

function parseEndpoint(raw: unknown, i: number, where: string): Endpoint {
  const at = `${where}.endpoints[${i}]`;
  if (typeof raw !== 'object' || raw === null) throw new Error(`${at}: expected a mapping with name and url`);
  const e = raw as Record<string, unknown>;
  if (typeof e.url !== 'string' || !/^https?:\/\//.test(e.url)) throw new Error(`${at}.url: expected an http(s) URL, got ${JSON.stringify(e.url)}`);
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries((e.headers ?? {}) as Record<string, unknown>)) {
    // distribution writes header values as lists.
    headers[k] = Array.isArray(v) ? v.map(String).join(', ') : String(v);
  }
  const actions = e.actions === undefined ? ACTIONS : stringList(e.actions, `${at}.actions`);
  for (const a of actions) if (!ACTIONS.includes(a as EventAction)) throw new Error(`${at}.actions: unknown action ${a} (known: ${ACTIONS.join(', ')})`);
  const retries = e.retries === undefined ? 3 : Number(e.retries);
  if (!Number.isInteger(retries) || retries < 0) throw new Error(`${at}.retries: expected a whole number ≥ 0`);
  return {
    name: typeof e.name === 'string' && e.name !== '' ? e.name : `endpoint-${i}`,
    url: e.url,
    headers,
    timeout: duration(e.timeout, `${at}.timeout`, 5000),
    retries,
    backoff: duration(e.backoff, `${at}.backoff`, 1000),
    ignoredMediaTypes: stringList(e.ignoredMediaTypes, `${at}.ignoredMediaTypes`),
    actions: actions as EventAction[],
  };
}

/** The YAML `notifications:` section; null when there is nothing to deliver. */
export function parseNotificationSettings(raw: unknown, where = 'notifications'): NotificationSettings | null {
  if (raw === null || raw === undefined) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where}: expected a mapping with endpoints`);
  const r = raw as Record<string, unknown>;
  if (r.endpoints !== undefined && !Array.isArray(r.endpoints)) throw new Error(`${where}.endpoints: expected a list`);
  const endpoints = ((r.endpoints ?? []) as unknown[]).map((e, i) => parseEndpoint(e, i, where));
  if (endpoints.length === 0) return null;
  const names = new Set(endpoints.map((e) => e.name));
  if (names.size !== endpoints.length) throw new Error(`${where}.endpoints: names must be unique`);
  return { endpoints, queuePrefix: typeof r.queuePrefix === 'string' && r.queuePrefix !== '' ? r.queuePrefix : 'slipway' };
}

const wants = (e: Endpoint, event: RegistryEvent): boolean =>
  e.actions.includes(event.action) && !e.ignoredMediaTypes.includes(event.target.mediaType);

interface JobData {
  endpoint: string;
  event: RegistryEvent;
}

/** One POST of one envelope; resolves on 2xx, rejects otherwise (BullMQ then retries). */
export function deliver(endpoint: Endpoint, events: RegistryEvent[]): Promise<void> {
  const body = Buffer.from(JSON.stringify({ events }));
  const send = endpoint.url.startsWith('https:') ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = send(endpoint.url, {
      method: 'POST',
      headers: { ...endpoint.headers, 'Content-Type': EVENTS_MEDIA_TYPE, 'Content-Length': String(body.length) },
      timeout: endpoint.timeout,
    });
    req.once('timeout', () => req.destroy(new Error(`${endpoint.name}: no answer from ${endpoint.url} within ${endpoint.timeout}ms`)));
    req.once('error', reject);
    req.once('response', (res) => {
      res.resume();
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300) resolve();
      else reject(new Error(`${endpoint.name}: ${endpoint.url} answered ${status}`));
    });
    req.end(body);
  });
}

export interface Notifier {
  enqueue(event: RegistryEvent): void;
  /** Jobs not yet delivered, by state (sampled for /metrics). */
  backlog(): Promise<Record<'waiting' | 'delayed' | 'active', number>>;
  close(): Promise<void>;
}

/** The queue and, in the same process, the worker that delivers from it. */
export function startNotifier(settings: NotificationSettings, redisUrl: string, log: (err: unknown) => void): Notifier {
  const connect = () => new Redis(redisUrl, { maxRetriesPerRequest: null, connectionName: 'slipway-notifications' });
  const queueConn = connect();
  const workerConn = connect();
  const opts = { prefix: settings.queuePrefix };
  const queue = new Queue<JobData>(QUEUE_NAME, { ...opts, connection: queueConn });
  const byName = new Map(settings.endpoints.map((e) => [e.name, e]));
  const worker = new Worker<JobData>(
    QUEUE_NAME,
    async (job: Job<JobData>) => {
      const endpoint = byName.get(job.data.endpoint);
      if (!endpoint) return; // an endpoint removed from the config since the event was queued
      await deliver(endpoint, [job.data.event]);
    },
    { ...opts, connection: workerConn, concurrency: 8 },
  );
  queue.on('error', log);
  worker.on('error', log);
  return {
    enqueue(event) {
      for (const e of settings.endpoints) {
        if (!wants(e, event)) continue;
        queue
          .add(event.action, { endpoint: e.name, event }, {
            attempts: e.retries + 1,
            backoff: { type: 'exponential', delay: e.backoff },
            removeOnComplete: true,
            removeOnFail: 1000,
          })
          .catch(log);
      }
    },
    backlog: async () => {
      const c = await queue.getJobCounts('waiting', 'delayed', 'active');
      return { waiting: c.waiting ?? 0, delayed: c.delayed ?? 0, active: c.active ?? 0 };
    },
    close: async () => {
      await worker.close();
      await queue.close();
      queueConn.disconnect();
      workerConn.disconnect();
    },
  };
}

/** An event of this process (`instanceID` is fixed per process, as in distribution). */
const INSTANCE_ID = randomUUID();

export function makeEvent(
  action: EventAction,
  target: EventTarget,
  req: { id: string; addr: string; host: string; method: string; useragent: string },
  sourceAddr: string,
): RegistryEvent {
  return { id: randomUUID(), timestamp: new Date().toISOString(), action, target, request: req, actor: {}, source: { addr: sourceAddr, instanceID: INSTANCE_ID } };
}
