import { createHash, randomBytes } from 'node:crypto';
import type { Agent } from 'node:http';
import { pushBlob, type Payload } from './blob-load.js';
import { expectStatus, send } from './http-client.js';
import { run } from './processes.js';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const payload = (b: Buffer): Payload => ({ parts: [b], size: b.length, digest: digestOf(b) });

/** Pushes a config + one layer + an OCI image manifest under `repo:tag`; returns the manifest digest. */
export async function pushSmallImage(agent: Agent, base: string, repo: string, tag: string): Promise<string> {
  const layer = payload(randomBytes(4096));
  const config = payload(
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        config: { Cmd: ['/bin/sh'] },
        rootfs: { type: 'layers', diff_ids: [layer.digest] },
      }),
    ),
  );
  await pushBlob(agent, base, repo, layer);
  await pushBlob(agent, base, repo, config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
      layers: [{ mediaType: OCI_LAYER, digest: layer.digest, size: layer.size }],
    }),
  );
  const url = new URL(`/v2/${repo}/manifests/${tag}`, base);
  expectStatus(await send(agent, url, { method: 'PUT', headers: { 'Content-Type': OCI_MANIFEST }, body: [manifest] }), 201, `PUT manifest ${repo}:${tag}`);
  return digestOf(manifest);
}

/** One GET by tag before measuring, so wrk does not count error responses as throughput. */
export async function checkManifestGet(agent: Agent, base: string, repo: string, tag: string, digest: string): Promise<void> {
  const url = new URL(`/v2/${repo}/manifests/${tag}`, base);
  const reply = expectStatus(await send(agent, url, { method: 'GET', headers: { Accept: OCI_MANIFEST }, keepBody: true }), 200, `GET manifest ${repo}:${tag}`);
  const type = reply.headers['content-type'] ?? '';
  if (!type.startsWith(OCI_MANIFEST)) throw new Error(`GET manifest ${repo}:${tag}: Content-Type ${type}`);
  const body = digestOf(Buffer.from(reply.body));
  if (body !== digest) throw new Error(`GET manifest ${repo}:${tag}: body hashes to ${body}, pushed ${digest}`);
}

export interface WrkResult {
  requestsPerSecond: number;
  non2xx: number;
  socketErrors: string;
}

/** `wrk -t2 -c16 -dNs` with an Accept header for the OCI manifest type. */
export async function wrkManifest(url: string, seconds: number): Promise<WrkResult> {
  const args = ['-t2', '-c16', `-d${seconds}s`, '-H', `Accept: ${OCI_MANIFEST}`, url];
  const { stdout } = await run('wrk', args, { timeoutMs: (seconds + 30) * 1000 });
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (!rps) throw new Error(`wrk printed no Requests/sec:\n${stdout}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(stdout)?.[1] ?? 0);
  const socketErrors = /Socket errors:[^\n]*/.exec(stdout)?.[0] ?? '';
  return { requestsPerSecond: Number(rps[1]), non2xx, socketErrors };
}
