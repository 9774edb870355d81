import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Redis } from 'ioredis';
import { http, makeImage, putManifest } from './harness/http.js';
import { randomPrefix, sharedRedis } from './harness/redis.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './harness/registry.js';

const EVENTS_TYPE = 'application/vnd.docker.distribution.events.v1+json';

interface Delivered {
  headers: IncomingHttpHeaders;
  events: Record<string, any>[];
}

/** A webhook receiver on loopback that answers 500 to its first `failFirst` POSTs. */
async function startReceiver(opts: { failFirst?: number; port?: number } = {}) {
  const got: Delivered[] = [];
  let attempts = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      attempts++;
      if (attempts <= (opts.failFirst ?? 0)) {
        res.statusCode = 500;
        res.end();
        return;
      }
      got.push({ headers: req.headers, events: (JSON.parse(Buffer.concat(chunks).toString()) as { events: Record<string, any>[] }).events });
      res.end();
    });
  });
  await new Promise<void>((r) => server.listen(opts.port ?? 0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`,
    port: (server.address() as AddressInfo).port,
    attempts: () => attempts,
    events: () => got.flatMap((d) => d.events),
    deliveries: () => got,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function until<T>(what: string, probe: () => T | undefined, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const find = (events: Record<string, any>[], action: string, digest: string) =>
  events.find((e) => e.action === action && e.target?.digest === digest);

let redis: { url: string; release(): Promise<void> };
const prefixes: string[] = [];
before(async () => {
  redis = await sharedRedis();
});
after(async () => {
  // Remove every queue key these tests made, and check that none is left.
  const client = new Redis(redis.url);
  for (const prefix of prefixes) {
    const keys = await client.keys(`${prefix}:*`);
    if (keys.length) await client.del(...keys);
    assert.equal((await client.keys(`${prefix}:*`)).length, 0);
  }
  client.disconnect();
  await redis.release();
});

async function configFile(endpoints: unknown[]): Promise<{ path: string; prefix: string }> {
  const prefix = randomPrefix('notify');
  prefixes.push(prefix);
  const dir = await tempDir('slipway-notify-');
  const path = join(dir, 'registry.yaml');
  await writeFile(path, JSON.stringify({ notifications: { queuePrefix: prefix, endpoints } }));
  return { path, prefix };
}

test('push, pull and delete events reach a receiver that fails at first; filters hold; /metrics counts', async () => {
  const all = await startReceiver({ failFirst: 2 });
  const noPulls = await startReceiver();
  const { path } = await configFile([
    { name: 'all', url: all.url, headers: { Authorization: ['Bearer t0ken'] }, timeout: '2s', retries: 4, backoff: '100ms' },
    { name: 'no-pulls', url: noPulls.url, actions: ['push', 'delete'], ignoredMediaTypes: ['application/octet-stream'] },
  ]);
  let reg: RegistryProcess | undefined;
  try {
    reg = await startRegistryProcess({ args: ['--config', path, '--redis', redis.url] });
    const repo = `notify/r${randomBytes(4).toString('hex')}`;
    const manifest = await makeImage(reg.url, repo);
    const put = await putManifest(reg.url, repo, 'v1', manifest);
    assert.equal(put.status, 201);
    const digest = put.headers.get('docker-content-digest')!;
    const layer = (manifest.layers as { digest: string }[])[0]!.digest;
    const config = (manifest.config as { digest: string }).digest;

    const pushed = await until('the manifest push event', () => find(all.events(), 'push', digest));
    assert.ok(all.attempts() >= 3, 'the first two attempts failed and were retried');
    assert.equal(pushed.target.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(pushed.target.repository, repo);
    assert.equal(pushed.target.tag, 'v1');
    assert.equal(pushed.target.size, pushed.target.length);
    assert.match(pushed.target.url, new RegExp(`/v2/${repo}/manifests/${digest}$`));
    assert.equal(pushed.request.method, 'PUT');
    assert.ok(pushed.id && pushed.timestamp && pushed.source.instanceID);
    assert.deepEqual(pushed.actor, {});
    await until('the blob push events', () => (find(all.events(), 'push', layer) && find(all.events(), 'push', config)) || undefined);
    for (const d of all.deliveries()) {
      assert.equal(d.headers['content-type'], EVENTS_TYPE);
      assert.equal(d.headers.authorization, 'Bearer t0ken');
    }

    assert.equal((await http(`${reg.url}/v2/${repo}/blobs/${layer}`, { method: 'HEAD' })).status, 200);
    assert.equal((await http(`${reg.url}/v2/${repo}/manifests/v1`)).status, 200);
    assert.equal((await http(`${reg.url}/v2/${repo}/blobs/${layer}`)).status, 200);
    const pulled = await until('the manifest pull event', () => find(all.events(), 'pull', digest));
    assert.equal(pulled.request.method, 'GET');
    await until('the blob pull event', () => find(all.events(), 'pull', layer));

    assert.equal((await http(`${reg.url}/v2/${repo}/manifests/${digest}`, { method: 'DELETE' })).status, 202);
    await until('the delete event', () => find(all.events(), 'delete', digest));

    // The filtered endpoint: pushes and deletes of manifests, never pulls, never blobs (their media type is ignored).
    await until('the delete event at no-pulls', () => find(noPulls.events(), 'delete', digest));
    assert.ok(find(noPulls.events(), 'push', digest));
    assert.equal(noPulls.events().filter((e) => e.action === 'pull').length, 0);
    assert.equal(noPulls.events().filter((e) => e.target.mediaType === 'application/octet-stream').length, 0);
    // HEAD is not a pull: exactly one pull of the layer (the GET).
    assert.equal(all.events().filter((e) => e.action === 'pull' && e.target.digest === layer).length, 1);

    const metrics = await http(`${reg.url}/metrics`);
    assert.equal(metrics.status, 200);
    const text = metrics.body.toString();
    assert.match(text, /slipway_registry_http_requests_total\{route="manifest",method="PUT",status="201"\} 1/);
    assert.match(text, /slipway_registry_http_requests_total\{route="manifest",method="GET",status="200"\} 1/);
    assert.match(text, /slipway_registry_http_request_duration_seconds_bucket\{le="[^"]+",route="manifest",method="GET"\}/);
    const counter = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? 'NaN');
    assert.ok(counter('slipway_registry_bytes_in_total') > 0);
    assert.ok(counter('slipway_registry_bytes_out_total') > 0);
    assert.match(text, /slipway_registry_notification_backlog\{state="waiting"\} \d+/);
  } finally {
    await reg?.cleanup();
    await all.close();
    await noPulls.close();
  }
});

test('notifications without Redis: the registry refuses to start and says why', async () => {
  const { path } = await configFile([{ name: 'x', url: 'http://127.0.0.1:9/events' }]);
  await assert.rejects(startRegistryProcess({ args: ['--config', path] }), /notifications need Redis/);
});

test('events queued while the receiver is down are delivered after a registry restart', async () => {
  // Reserve a port for the receiver, then leave it closed: deliveries get ECONNREFUSED.
  const probe = await startReceiver();
  const port = probe.port;
  await probe.close();
  const { path, prefix } = await configFile([{ name: 'late', url: `http://127.0.0.1:${port}/events`, retries: 10, backoff: '1s', timeout: '1s' }]);
  const first = await startRegistryProcess({ args: ['--config', path, '--redis', redis.url] });
  let second: RegistryProcess | undefined;
  let receiver: Awaited<ReturnType<typeof startReceiver>> | undefined;
  try {
    const repo = `notify/r${randomBytes(4).toString('hex')}`;
    const put = await putManifest(first.url, repo, 'v1', await makeImage(first.url, repo));
    assert.equal(put.status, 201);
    const digest = put.headers.get('docker-content-digest')!;
    await first.stop();
    // Between the two processes the undelivered events live only in Redis.
    const client = new Redis(redis.url);
    const queued = (await client.zcard(`${prefix}:notifications:delayed`)) + (await client.llen(`${prefix}:notifications:wait`));
    client.disconnect();
    assert.ok(queued >= 3, `expected the 3 push events in the queue, found ${queued}`);

    receiver = await startReceiver({ port });
    second = await startRegistryProcess({ data: first.data, args: ['--config', path, '--redis', redis.url] });
    const pushed = await until('the push event queued before the restart', () => find(receiver!.events(), 'push', digest));
    assert.equal(pushed.target.repository, repo);
  } finally {
    await second?.stop();
    await first.cleanup();
    await receiver?.close();
  }
});
