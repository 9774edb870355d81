import { createHash } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { request as httpRequest } from 'node:http';

export interface Reply {
  status: number;
  headers: Headers;
  body: Buffer;
  /** The OCI error code of an error reply, or undefined. */
  code?: string;
  json<T = unknown>(): T;
}

/** fetch with the body read and the OCI error code picked out. */
type Body = RequestInit['body'] | Buffer;

export async function http(url: string, init: Omit<RequestInit, 'body'> & { body?: Body; duplex?: 'half' } = {}): Promise<Reply> {
  const res = await fetch(url, { redirect: 'manual', ...init, body: init.body as RequestInit['body'] });
  const body = Buffer.from(await res.arrayBuffer());
  let code: string | undefined;
  if (res.status >= 400 && body.length) {
    try {
      code = (JSON.parse(body.toString()) as { errors: { code: string }[] }).errors[0]?.code;
    } catch {
      code = undefined;
    }
  }
  return { status: res.status, headers: res.headers, body, code, json: <T>() => JSON.parse(body.toString()) as T };
}

/** A request whose path is sent exactly as written (no `..` normalisation). */
export function rawPath(base: string, method: string, path: string): Promise<{ status: number; body: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, method, path }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Opens a socket, sends the request head and `bodyPart`, then closes the
 * connection without sending the rest: a client that dies mid-upload.
 */
export async function sendAndHangUp(base: string, head: string, bodyPart: Buffer): Promise<void> {
  const u = new URL(base);
  const socket: Socket = connect(Number(u.port), u.hostname);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.write(head.replace(/\n/g, '\r\n') + '\r\n');
  await new Promise<void>((resolve) => socket.write(bodyPart, () => resolve()));
  await new Promise((r) => setTimeout(r, 200));
  socket.destroy();
  await new Promise((r) => setTimeout(r, 200));
}

export const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Pushes a blob monolithically; returns its digest. */
export async function pushBlob(base: string, repo: string, bytes: Buffer): Promise<string> {
  const digest = sha256(bytes);
  const r = await http(`${base}/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    method: 'POST',
    body: bytes,
    headers: { 'Content-Type': 'application/octet-stream' },
  });
  if (r.status !== 201) throw new Error(`blob push failed: ${r.status} ${r.body.toString()}`);
  return digest;
}

export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

/** Pushes a config and a layer and returns a manifest (object) that references them. */
export async function makeImage(
  base: string,
  repo: string,
  opts: { docker?: boolean; arch?: string; extra?: Record<string, unknown> } = {},
): Promise<Record<string, unknown>> {
  const config = Buffer.from(JSON.stringify({ architecture: opts.arch ?? 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, nonce: Math.random() }));
  const layer = Buffer.from(`layer ${Math.random()}`);
  const configDigest = await pushBlob(base, repo, config);
  const layerDigest = await pushBlob(base, repo, layer);
  return {
    schemaVersion: 2,
    mediaType: opts.docker ? MT.dockerManifest : MT.ociManifest,
    config: { mediaType: opts.docker ? MT.dockerConfig : MT.ociConfig, digest: configDigest, size: config.length },
    layers: [{ mediaType: opts.docker ? MT.dockerLayer : MT.ociLayer, digest: layerDigest, size: layer.length }],
    ...opts.extra,
  };
}

/** PUTs a manifest; returns the reply. */
export async function putManifest(base: string, repo: string, ref: string, manifest: unknown, contentType?: string): Promise<Reply> {
  const bytes = Buffer.isBuffer(manifest) ? manifest : Buffer.from(JSON.stringify(manifest));
  const type = contentType ?? ((manifest as { mediaType?: string }).mediaType || MT.ociManifest);
  return http(`${base}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: bytes, headers: { 'Content-Type': type } });
}
