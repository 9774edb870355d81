/*
 * The builder's side of the distribution API. Reading (resolve a reference, fetch a config
 * or a layer) goes through the runner's RegistryClient; writing (HEAD a blob, mount it from
 * another repository, upload it in one POST, PUT a manifest) is here. Config blobs are small
 * and immutable: they are kept on the worker's disk by digest, so a rebuild reads them
 * without asking the registry.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { PullError, RegistryClient, parseReference, type ImageReference } from '../runner/index.js';
import { MEDIA, type Descriptor } from './image.js';

export interface RepoRef {
  registry: string;
  repository: string;
}

export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

export interface Resolved {
  manifestDigest: string;
  manifest: ImageManifest;
}

/** The registry could not be reached or answered unexpectedly (worth a retry). */
export class RegistryUnavailableError extends Error {}

export class BuildRegistry {
  private readonly reader: RegistryClient;
  private readonly http = new HttpAgent({ keepAlive: true, maxSockets: 16 });
  private readonly https = new HttpsAgent({ keepAlive: true, maxSockets: 16 });

  constructor(
    private readonly blobDir: string,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.reader = new RegistryClient(env);
  }

  close(): void {
    this.reader.close();
    this.http.destroy();
    this.https.destroy();
  }

  /** The manifest a reference names (through an index to linux/amd64); undefined when the registry says it is unknown. */
  async resolve(ref: ImageReference, signal?: AbortSignal): Promise<Resolved | undefined> {
    try {
      const r = await this.reader.resolve(ref, signal);
      return { manifestDigest: r.manifestDigest, manifest: r.manifest as ImageManifest };
    } catch (err) {
      if (err instanceof PullError && (err.status === 404 || err.code === 'MANIFEST_UNKNOWN' || err.code === 'NAME_UNKNOWN')) return undefined;
      if (err instanceof PullError && err.status === undefined) throw new RegistryUnavailableError(err.message);
      throw err;
    }
  }

  /** A config blob (read whole, verified), from the worker's disk when it was read before. */
  async config(repo: RepoRef, desc: Descriptor, signal?: AbortSignal): Promise<Buffer> {
    const path = join(this.blobDir, desc.digest.replace(':', '/'));
    const known = await readFile(path).catch(() => undefined);
    if (known && sha256(known) === desc.digest) return known;
    const bytes = await this.reader.fetchConfig({ ...repo }, desc, signal);
    await this.keep(desc.digest, bytes);
    return bytes;
  }

  /** Remembers a small blob this worker made (a config), as if it had been fetched. */
  async keep(digest: string, bytes: Buffer): Promise<void> {
    const path = join(this.blobDir, digest.replace(':', '/'));
    await mkdir(join(this.blobDir, 'sha256'), { recursive: true });
    const tmp = `${path}.${randomBytes(6).toString('hex')}`;
    await writeFile(tmp, bytes);
    await rename(tmp, path);
  }

  /** The raw layer stream; the caller verifies the digest. */
  openBlob(repo: RepoRef, desc: Descriptor, signal?: AbortSignal): Promise<IncomingMessage> {
    return this.reader.openBlob({ ...repo }, desc, signal);
  }

  async hasBlob(repo: RepoRef, digest: string): Promise<boolean> {
    const res = await this.send('HEAD', repo, `blobs/${digest}`);
    return res.status === 200;
  }

  /** Cross-repository mount; false when the registry would rather have the bytes. */
  async mount(repo: RepoRef, digest: string, from: string): Promise<boolean> {
    const res = await this.send('POST', repo, `blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`);
    if (res.status === 201) return true;
    if (res.status === 202 && res.location) await this.sendUrl('DELETE', new URL(res.location, this.base(repo))).catch(() => undefined);
    return false;
  }

  /** Uploads a blob whole: one POST ?digest=, or POST + PUT where the registry wants a session. */
  async upload(repo: RepoRef, desc: Descriptor, open: () => Readable | Promise<Readable>): Promise<void> {
    const headers = { 'Content-Type': 'application/octet-stream', 'Content-Length': String(desc.size) };
    let res = await this.send('POST', repo, `blobs/uploads/?digest=${encodeURIComponent(desc.digest)}`, { headers, body: await open() });
    if (res.status === 202 && res.location) {
      const url = new URL(res.location, this.base(repo));
      url.searchParams.set('digest', desc.digest);
      res = await this.sendUrl('PUT', url, { headers, body: await open() });
    }
    if (res.status !== 201) throw this.failure(`upload of ${desc.digest} to ${repo.registry}/${repo.repository}`, res);
  }

  /** The digest a tag points to, or undefined (HEAD). */
  async manifestDigest(repo: RepoRef, reference: string): Promise<string | undefined> {
    const res = await this.send('HEAD', repo, `manifests/${reference}`, { headers: { Accept: MEDIA.manifest } });
    return res.status === 200 ? res.digest : undefined;
  }

  async putManifest(repo: RepoRef, reference: string, bytes: Buffer): Promise<void> {
    const res = await this.send('PUT', repo, `manifests/${reference}`, { headers: { 'Content-Type': MEDIA.manifest, 'Content-Length': String(bytes.length) }, body: bytes });
    if (res.status !== 201) throw this.failure(`push of manifest ${reference} to ${repo.registry}/${repo.repository}`, res);
  }

  private failure(what: string, res: Reply): Error {
    const msg = `${what} failed: HTTP ${res.status} ${res.body.slice(0, 300)}`;
    return res.status >= 500 || res.status === 0 ? new RegistryUnavailableError(msg) : new Error(msg);
  }

  private base(repo: RepoRef): string {
    return `${scheme(repo.registry, this.env)}://${repo.registry}`;
  }

  private send(method: string, repo: RepoRef, path: string, opts: SendOptions = {}): Promise<Reply> {
    return this.sendUrl(method, new URL(`${this.base(repo)}/v2/${repo.repository}/${path}`), opts);
  }

  private sendUrl(method: string, url: URL, opts: SendOptions = {}): Promise<Reply> {
    const secure = url.protocol === 'https:';
    const request = secure ? httpsRequest : httpRequest;
    return new Promise<Reply>((resolve, reject) => {
      const req = request(url, { method, headers: opts.headers, agent: secure ? this.https : this.http }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.length < 64 && chunks.push(c));
        res.on('end', () => {
          const digest = res.headers['docker-content-digest'];
          resolve({ status: res.statusCode ?? 0, location: res.headers.location, digest: typeof digest === 'string' ? digest : undefined, body: Buffer.concat(chunks).toString() });
        });
        res.on('error', reject);
      });
      req.on('error', (err: NodeJS.ErrnoException) => reject(new RegistryUnavailableError(`cannot reach registry ${url.host} (${err.code ?? err.message}) for ${method} ${url.pathname}`)));
      if (opts.body === undefined) req.end();
      else if (Buffer.isBuffer(opts.body)) req.end(opts.body);
      else {
        opts.body.on('error', (err) => req.destroy(err));
        opts.body.pipe(req);
      }
    });
  }
}

interface SendOptions {
  headers?: Record<string, string>;
  body?: Buffer | Readable;
}

interface Reply {
  status: number;
  location?: string;
  digest?: string;
  body: string;
}

/** As the runner's client decides: loopback and SLIPWAY_INSECURE_REGISTRIES over http. */
function scheme(host: string, env: NodeJS.ProcessEnv): 'http' | 'https' {
  const insecure = (env.SLIPWAY_INSECURE_REGISTRIES ?? '').split(',').map((h) => h.trim());
  const name = host.replace(/:\d+$/, '');
  const loopback = name === 'localhost' || name.startsWith('127.') || name === '[::1]';
  return loopback || insecure.includes(host) || insecure.includes('*') ? 'http' : 'https';
}

export const sha256 = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

export function repoOf(reference: string): RepoRef & { tag: string } {
  const r = parseReference(reference);
  return { registry: r.registry, repository: r.repository, tag: r.tag ?? 'latest' };
}
