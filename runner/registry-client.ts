/*
 * The pull side of the OCI distribution API: reference → manifest (an index or manifest
 * list → its linux/amd64 entry) → config → layer streams. Manifests and configs are small
 * and read whole (with a size cap); layers are handed out as streams for the caller to
 * verify with `digestVerifier` while it unpacks them. Registries on loopback (or listed in
 * SLIPWAY_INSECURE_REGISTRIES, comma-separated, `*` for all) are spoken to over plain
 * http, others over https, as docker does.
 */
import { createHash } from 'node:crypto';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Transform, type Readable } from 'node:stream';
import { formatReference, type ImageReference } from './reference.js';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;
const ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, MEDIA.dockerList, MEDIA.dockerManifest].join(', ');
const INDEX_TYPES: string[] = [MEDIA.ociIndex, MEDIA.dockerList];
const MANIFEST_MAX = 4 << 20; // distribution's own limit
const CONFIG_MAX = 8 << 20;
const REDIRECTS_MAX = 5;
export const WANTED_PLATFORM = { os: 'linux', architecture: 'amd64' } as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  urls?: string[];
}

export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ResolvedImage {
  manifest: ImageManifest;
  manifestBytes: Buffer;
  manifestDigest: string;
  /** Set when the reference named an index / manifest list. */
  indexDigest?: string;
}

export class RegistryError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly code?: string,
  ) {
    super(message);
    this.name = 'RegistryError';
  }
}

export class RegistryClient {
  private readonly http = new HttpAgent({ keepAlive: true, maxSockets: 16 });
  private readonly https = new HttpsAgent({ keepAlive: true, maxSockets: 16 });
  private readonly tokens = new Map<string, string>();

  constructor(private readonly env: NodeJS.ProcessEnv = process.env) {}

  close(): void {
    this.http.destroy();
    this.https.destroy();
  }

  /** The manifest `ref` names, through an index to its linux/amd64 entry; digests verified. */
  async resolve(ref: ImageReference, signal?: AbortSignal): Promise<ResolvedImage> {
    const top = await this.fetchManifest(ref, ref.digest ?? ref.tag ?? 'latest', signal);
    if (!INDEX_TYPES.includes(top.mediaType)) return { ...asImageManifest(ref, top), manifestDigest: top.digest };
    const entries = ((top.doc as { manifests?: Descriptor[] }).manifests ?? []).filter((d) => d && typeof d.digest === 'string');
    const chosen = entries.find((d) => d.platform?.os === WANTED_PLATFORM.os && d.platform.architecture === WANTED_PLATFORM.architecture);
    if (!chosen) {
      const have = entries.map((d) => [d.platform?.os, d.platform?.architecture, d.platform?.variant].filter(Boolean).join('/') || '(no platform)');
      throw new RegistryError(
        `${formatReference(ref)} has no ${WANTED_PLATFORM.os}/${WANTED_PLATFORM.architecture} image; its index lists: ${have.join(', ') || 'nothing'}. Push an amd64 image or pull another reference`,
      );
    }
    const child = await this.fetchManifest(ref, chosen.digest, signal);
    if (INDEX_TYPES.includes(child.mediaType)) throw new RegistryError(`${formatReference(ref)}: index entry ${chosen.digest} is itself an index; nested indexes are not supported`);
    return { ...asImageManifest(ref, child), manifestDigest: child.digest, indexDigest: top.digest };
  }

  /** The config blob, read whole (it is small) and verified. */
  async fetchConfig(ref: ImageReference, desc: Descriptor, signal?: AbortSignal): Promise<Buffer> {
    if (desc.size > CONFIG_MAX) throw new RegistryError(`${formatReference(ref)}: config ${desc.digest} is ${desc.size} bytes, over the ${CONFIG_MAX}-byte limit`);
    const res = await this.get(ref, `blobs/${desc.digest}`, '*/*', signal);
    const bytes = await readCapped(res, CONFIG_MAX, `config ${desc.digest}`);
    verifyBytes(bytes, desc, `${formatReference(ref)}: config`);
    return bytes;
  }

  /** The raw blob stream (unverified: pipe it through `digestVerifier(desc)`). */
  openBlob(ref: ImageReference, desc: Descriptor, signal?: AbortSignal): Promise<IncomingMessage> {
    return this.get(ref, `blobs/${desc.digest}`, '*/*', signal);
  }

  private async fetchManifest(ref: ImageReference, reference: string, signal?: AbortSignal): Promise<{ mediaType: string; doc: unknown; bytes: Buffer; digest: string }> {
    const res = await this.get(ref, `manifests/${reference}`, ACCEPT, signal);
    const bytes = await readCapped(res, MANIFEST_MAX, `manifest ${reference}`);
    const where = `${formatReference(ref)}: manifest ${reference}`;
    const pinned = reference.includes(':') ? reference : headerDigest(res);
    const digest = pinned ?? `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    verifyBytes(bytes, { digest, size: bytes.length, mediaType: '' }, where);
    let doc: { mediaType?: string; schemaVersion?: number };
    try {
      doc = JSON.parse(bytes.toString('utf8')) as typeof doc;
    } catch {
      throw new RegistryError(`${where} is not JSON`);
    }
    const mediaType = doc.mediaType ?? res.headers['content-type']?.split(';')[0]?.trim() ?? '';
    if (doc.schemaVersion === 1 || mediaType.startsWith('application/vnd.docker.distribution.manifest.v1+')) throw new RegistryError(`${where} is a Docker schema 1 manifest, which is not supported; re-push the image with a current client`);
    return { mediaType, doc, bytes, digest };
  }

  private async get(ref: ImageReference, path: string, accept: string, signal?: AbortSignal): Promise<IncomingMessage> {
    const url = new URL(`${this.scheme(ref.registry)}://${ref.registry}/v2/${ref.repository}/${path}`);
    const scope = `repository:${ref.repository}:pull`;
    let res = await this.follow(url, accept, this.tokens.get(scope), signal);
    const challenge = res.headers['www-authenticate'];
    if (res.statusCode === 401 && typeof challenge === 'string' && /^bearer /i.test(challenge)) {
      res.resume();
      this.tokens.set(scope, await this.token(challenge, scope, signal));
      res = await this.follow(url, accept, this.tokens.get(scope), signal);
    }
    const status = res.statusCode ?? 0;
    if (status >= 200 && status < 300) return res;
    throw await errorFrom(res, `GET ${url.href}`, formatReference(ref));
  }

  /** GET with redirects followed (blobs may live behind a 307 to object storage). */
  private async follow(url: URL, accept: string, token: string | undefined, signal?: AbortSignal): Promise<IncomingMessage> {
    let current = url;
    for (let hop = 0; ; hop++) {
      const auth = token && current.host === url.host ? { Authorization: `Bearer ${token}` } : undefined;
      const res = await this.send(current, { Accept: accept, ...auth }, signal);
      const location = res.headers.location;
      if (![301, 302, 303, 307, 308].includes(res.statusCode ?? 0) || !location) return res;
      res.resume();
      if (hop >= REDIRECTS_MAX) throw new RegistryError(`GET ${url.href}: more than ${REDIRECTS_MAX} redirects`);
      current = new URL(location, current);
    }
  }

  private send(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<IncomingMessage> {
    const secure = url.protocol === 'https:';
    const request = secure ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(url, { headers, agent: secure ? this.https : this.http, signal }, resolve);
      req.on('error', (err: NodeJS.ErrnoException) =>
        reject(err.name === 'AbortError' ? err : new RegistryError(`cannot reach registry ${url.host} (${err.code ?? err.message}) for GET ${url.href}: is it running, and is the address right?`)),
      );
      req.end();
    });
  }

  /** Anonymous Bearer token for `scope` (docker's token protocol, minimal). */
  private async token(challenge: string, scope: string, signal?: AbortSignal): Promise<string> {
    const params = Object.fromEntries([...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!.toLowerCase(), m[2]!]));
    if (!params.realm) throw new RegistryError(`registry asked for a Bearer token without a realm: ${challenge}`);
    const url = new URL(params.realm);
    if (params.service) url.searchParams.set('service', params.service);
    url.searchParams.set('scope', params.scope ?? scope);
    const res = await this.follow(url, 'application/json', undefined, signal);
    if (res.statusCode !== 200) throw await errorFrom(res, `GET ${url.href}`, 'token');
    const body = JSON.parse((await readCapped(res, 1 << 20, 'token')).toString()) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw new RegistryError(`token service ${url.origin} answered without a token`);
    return token;
  }

  private scheme(host: string): 'http' | 'https' {
    const insecure = (this.env.SLIPWAY_INSECURE_REGISTRIES ?? '').split(',').map((h) => h.trim());
    const name = host.replace(/:\d+$/, '');
    const loopback = name === 'localhost' || name.startsWith('127.') || name === '[::1]';
    return loopback || insecure.includes(host) || insecure.includes('*') ? 'http' : 'https';
  }
}

function asImageManifest(ref: ImageReference, m: { mediaType: string; doc: unknown; bytes: Buffer }): { manifest: ImageManifest; manifestBytes: Buffer } {
  const doc = m.doc as Partial<ImageManifest>;
  const where = `${formatReference(ref)}: manifest`;
  if (m.mediaType !== MEDIA.ociManifest && m.mediaType !== MEDIA.dockerManifest) throw new RegistryError(`${where} has media type "${m.mediaType}", not an image manifest`);
  if (!doc.config || !Array.isArray(doc.layers)) throw new RegistryError(`${where} lacks config or layers`);
  for (const d of [doc.config, ...doc.layers]) {
    if (!/^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/.test(String(d?.digest)) || !Number.isSafeInteger(d?.size) || d.size < 0) {
      throw new RegistryError(`${where} has a descriptor with a bad digest or size: ${JSON.stringify(d)}`);
    }
  }
  return { manifest: doc as ImageManifest, manifestBytes: m.bytes };
}

function headerDigest(res: IncomingMessage): string | undefined {
  const h = res.headers['docker-content-digest'];
  return typeof h === 'string' && /^sha256:[a-f0-9]{64}$/.test(h) ? h : undefined;
}

function verifyBytes(bytes: Buffer, desc: Descriptor, where: string): void {
  const [algorithm, hex] = desc.digest.split(':');
  const actual = createHash(algorithm!).update(bytes).digest('hex');
  if (actual !== hex || bytes.length !== desc.size) {
    throw new RegistryError(`${where}: expected ${desc.digest} (${desc.size} bytes), got ${algorithm}:${actual} (${bytes.length} bytes); the registry's copy is corrupt or was changed`);
  }
}

async function readCapped(res: Readable, max: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > max) {
      res.destroy();
      throw new RegistryError(`${what} is larger than ${max} bytes; refusing to read it into memory`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function errorFrom(res: IncomingMessage, request: string, subject: string): Promise<RegistryError> {
  const body = await readCapped(res, 64 << 10, 'error body').catch(() => Buffer.alloc(0));
  let first: { code?: string; message?: string } | undefined;
  try {
    first = (JSON.parse(body.toString()) as { errors?: { code?: string; message?: string }[] }).errors?.[0];
  } catch {
    first = undefined;
  }
  // "MANIFEST_UNKNOWN" → "manifest unknown", then the registry's own words.
  const what = first?.code ? `${first.code.toLowerCase().replace(/_/g, ' ')}${first.message ? `: ${first.message}` : ''}` : body.toString('utf8', 0, 200).trim() || res.statusMessage || 'error';
  const hint = res.statusCode === 404 ? '; check the repository, tag or digest' : res.statusCode === 401 || res.statusCode === 403 ? '; the registry refused access' : '';
  return new RegistryError(`pull ${subject}: ${what} (${res.statusCode}${first?.code ? ` ${first.code}` : ''} for ${request})${hint}`, res.statusCode, first?.code);
}

/**
 * A pass-through that hashes and counts `desc`'s bytes as they stream and fails the stream
 * (so the pipeline, so the pull) at the first byte past `size` or at the end on a mismatch.
 */
export function digestVerifier(desc: Descriptor, where: string, onBytes?: (total: number) => void): Transform {
  const [algorithm, hex] = desc.digest.split(':');
  const hash = createHash(algorithm!);
  let size = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      size += chunk.length;
      if (size > desc.size) return done(new RegistryError(`${where}: ${desc.digest} sent more than the ${desc.size} bytes its descriptor states`));
      hash.update(chunk);
      onBytes?.(size);
      done(null, chunk);
    },
    flush(done) {
      const actual = hash.digest('hex');
      if (size === desc.size && actual === hex) return done();
      done(new RegistryError(`${where}: expected ${desc.digest} (${desc.size} bytes), received ${algorithm}:${actual} (${size} bytes); the registry's copy is corrupt or was changed. Nothing was kept`));
    },
  });
}
