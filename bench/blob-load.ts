import { createHash, randomFillSync, type Hash } from 'node:crypto';
import type { Agent } from 'node:http';
import { expectStatus, pool, send } from './http-client.js';

/** A blob to push: the bytes as a list of buffers (written without copying) and its digest. */
export interface Payload {
  parts: readonly Buffer[];
  size: number;
  digest: string;
}

const TAIL = 64;

/**
 * Payloads of `size` bytes that share one random body and differ in a random 64-byte tail,
 * so every blob is new to the registry while the digests cost one hash of the body
 * (a copy of the hash state per blob) before anything is timed.
 */
export class PayloadSource {
  private readonly body: Buffer;
  private readonly bodyHash: Hash;

  constructor(readonly size: number) {
    if (size <= TAIL) throw new Error(`payload size ${size} is too small`);
    this.body = randomFillSync(Buffer.allocUnsafe(size - TAIL));
    this.bodyHash = createHash('sha256').update(this.body);
  }

  make(count: number): Payload[] {
    return Array.from({ length: count }, () => {
      const tail = randomFillSync(Buffer.allocUnsafe(TAIL));
      const digest = `sha256:${this.bodyHash.copy().update(tail).digest('hex')}`;
      return { parts: [this.body, tail], size: this.size, digest };
    });
  }
}

/** The docker client's flow: POST a session, one PATCH with the whole body, PUT ?digest=. */
export async function pushBlob(agent: Agent, base: string, repo: string, blob: Payload): Promise<void> {
  const start = expectStatus(await send(agent, new URL(`/v2/${repo}/blobs/uploads/`, base), { method: 'POST' }), 202, `POST upload ${repo}`);
  const session = new URL(location(start.headers.location, 'POST'), base);
  const patched = expectStatus(
    await send(agent, session, { method: 'PATCH', headers: { 'Content-Type': 'application/octet-stream' }, body: blob.parts }),
    202,
    `PATCH ${blob.digest}`,
  );
  const done = new URL(location(patched.headers.location, 'PATCH'), base);
  done.searchParams.set('digest', blob.digest);
  expectStatus(await send(agent, done, { method: 'PUT' }), 201, `PUT ${blob.digest}`);
}

function location(value: string | undefined, after: string): string {
  if (!value) throw new Error(`${after} answered without a Location header`);
  return value;
}

/** GET a blob, discarding the body; fails unless every byte arrived. */
export async function pullBlob(agent: Agent, base: string, repo: string, blob: Payload): Promise<void> {
  const reply = expectStatus(await send(agent, new URL(`/v2/${repo}/blobs/${blob.digest}`, base), { method: 'GET' }), 200, `GET ${blob.digest}`);
  if (reply.bytes !== blob.size) throw new Error(`GET ${blob.digest}: ${reply.bytes} bytes, expected ${blob.size}`);
}

/**
 * GET a blob from a registry that redirects (307 to a presigned storage URL), then GET that
 * URL as docker does; fails unless every byte arrived.
 */
export async function pullRedirected(agent: Agent, storageAgent: Agent, base: string, repo: string, blob: Payload): Promise<void> {
  const reply = expectStatus(await send(agent, new URL(`/v2/${repo}/blobs/${blob.digest}`, base), { method: 'GET' }), 307, `GET ${blob.digest} (redirect)`);
  const to = reply.headers.location;
  if (!to) throw new Error(`GET ${blob.digest}: 307 without a Location`);
  const data = expectStatus(await send(storageAgent, new URL(to, base), { method: 'GET' }), 200, `GET ${blob.digest} from storage`);
  if (data.bytes !== blob.size) throw new Error(`GET ${blob.digest} from storage: ${data.bytes} bytes, expected ${blob.size}`);
}

/** GET a blob and check its digest (outside timed sections). */
export async function verifyBlob(agent: Agent, base: string, repo: string, blob: Payload): Promise<void> {
  const hash = createHash('sha256');
  const url = new URL(`/v2/${repo}/blobs/${blob.digest}`, base);
  const reply = await send(agent, url, { method: 'GET', onData: (c) => hash.update(c) });
  expectStatus(reply, 200, `GET ${blob.digest}`);
  const digest = `sha256:${hash.digest('hex')}`;
  if (reply.bytes !== blob.size || digest !== blob.digest) {
    throw new Error(`GET ${blob.digest}: ${reply.bytes} bytes hashing to ${digest}, expected ${blob.size} bytes`);
  }
}

export interface Timed {
  seconds: number;
  bytes: number;
  ops: number;
}

/** Runs `op` over all `blobs` with `concurrency` in flight and returns the wall time. */
export async function timed(blobs: readonly Payload[], concurrency: number, op: (b: Payload) => Promise<void>): Promise<Timed> {
  const t0 = process.hrtime.bigint();
  await pool(blobs, concurrency, op);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, bytes: blobs.reduce((n, b) => n + b.size, 0), ops: blobs.length };
}
