import {
  MAX_MANIFEST_BYTES,
  digestOf,
  isIndexType,
  isStoreError,
  parseDigest,
  parseManifest,
  type Digest,
  type StoredManifest,
} from '../storage/index.js';
import { RegistryError } from './errors.js';
import type { Handler, Request, RouteContext } from './context.js';
import { contentLength, noContent } from './http.js';
import { parseReference } from './names.js';

/**
 * Reads a manifest body, refusing more than MAX_MANIFEST_BYTES without
 * buffering past it. The request is not destroyed on refusal: the error is
 * answered, then the rest of the body is drained (app.ts), so the client reads
 * the 413 instead of a reset.
 */
async function readManifestBody(req: Request): Promise<Buffer> {
  const declared = contentLength(req);
  if (declared !== undefined && declared > MAX_MANIFEST_BYTES) {
    throw new RegistryError('MANIFEST_TOO_LARGE', { size: declared, limit: MAX_MANIFEST_BYTES }, `manifest of ${declared} bytes exceeds the ${MAX_MANIFEST_BYTES}-byte limit`);
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req.iterator({ destroyOnReturn: false })) {
    size += (chunk as Buffer).length;
    if (size > MAX_MANIFEST_BYTES) {
      throw new RegistryError('MANIFEST_TOO_LARGE', { limit: MAX_MANIFEST_BYTES }, `manifest exceeds the ${MAX_MANIFEST_BYTES}-byte limit`);
    }
    chunks.push(chunk as Buffer);
  }
  if (declared !== undefined && size !== declared) {
    throw new RegistryError('SIZE_INVALID', undefined, `manifest body has ${size} bytes, Content-Length said ${declared}`);
  }
  return Buffer.concat(chunks);
}

function acceptedTypes(req: Request): string[] {
  const header = req.headers.accept;
  if (!header) return [];
  return header
    .split(',')
    .map((t) => t.split(';')[0]!.trim())
    .filter((t) => t !== '');
}

/**
 * Content negotiation as distribution does it: a client that does not accept
 * an index (old docker) gets the linux/amd64 image it names; a type the client
 * does not accept at all is MANIFEST_UNKNOWN.
 */
async function negotiate(ctx: RouteContext, stored: StoredManifest, accept: string[]): Promise<StoredManifest> {
  const type = stored.parsed.mediaType;
  if (accept.length === 0 || accept.includes(type) || accept.includes('*/*')) return stored;
  if (isIndexType(type)) {
    const child = stored.parsed.manifests.find(
      (m) => accept.includes(m.mediaType) && m.platform?.os === 'linux' && m.platform.architecture === 'amd64',
    );
    if (child) return ctx.store.manifests.get(ctx.name, parseDigest(child.digest));
  }
  throw new RegistryError('MANIFEST_UNKNOWN', { mediaType: type }, `manifest is ${type}, which the Accept header does not allow`);
}

export const getManifest: Handler = async (ctx, req, res) => {
  const ref = parseReference(ctx.param);
  const found = 'digest' in ref ? await ctx.store.manifests.get(ctx.name, ref.digest) : await ctx.store.manifests.getTagged(ctx.name, ref.tag);
  const stored = await negotiate(ctx, found, acceptedTypes(req));
  res.setHeader('Content-Type', stored.parsed.mediaType);
  res.setHeader('Docker-Content-Digest', stored.digest);
  res.setHeader('ETag', `"${stored.digest}"`);
  res.setHeader('Content-Length', String(stored.bytes.length));
  res.statusCode = 200;
  res.end(req.method === 'HEAD' ? undefined : stored.bytes);
  if (req.method === 'GET') ctx.events.emit('pull', { mediaType: stored.parsed.mediaType, digest: stored.digest, size: stored.bytes.length, tag: 'tag' in ref ? ref.tag : undefined });
};

export const putManifest: Handler = async (ctx, req, res) => {
  const ref = parseReference(ctx.param);
  const bytes = await readManifestBody(req);
  const algorithm = 'digest' in ref ? ref.digest.algorithm : 'sha256';
  const digest = parseDigest(digestOf(bytes, algorithm));
  if ('digest' in ref && ref.digest.value !== digest.value) {
    throw new RegistryError('DIGEST_INVALID', { expected: ref.digest.value, actual: digest.value }, `manifest bytes have digest ${digest.value}, not ${ref.digest.value}`);
  }
  const parsed = parseManifest(bytes, req.headers['content-type'] ?? null);
  // The store checks what the manifest names after claiming it against GC (docs/gc.md); a miss is MANIFEST_BLOB_UNKNOWN.
  await ctx.store.manifests.put(ctx.name, digest, bytes, parsed, 'tag' in ref ? ref.tag : undefined).catch((err: unknown) => {
    if (isStoreError(err, 'blob-unknown')) throw new RegistryError('MANIFEST_BLOB_UNKNOWN', err.detail, err.message);
    throw err;
  });
  const headers: Record<string, string> = {
    Location: `/v2/${ctx.name}/manifests/${digest.value}`,
    'Docker-Content-Digest': digest.value,
  };
  if (parsed.subject) headers['OCI-Subject'] = parsed.subject.digest;
  noContent(res, 201, headers);
  ctx.events.emit('push', { mediaType: parsed.mediaType, digest: digest.value, size: bytes.length, tag: 'tag' in ref ? ref.tag : undefined });
};

/** DELETE by digest removes the manifest (and its tags); by tag it only untags. */
export const deleteManifest: Handler = async (ctx, _req, res) => {
  if (!ctx.options.deleteEnabled) throw new RegistryError('UNSUPPORTED', undefined, 'deletion is disabled on this registry');
  const ref = parseReference(ctx.param);
  if ('tag' in ref) await ctx.store.manifests.untag(ctx.name, ref.tag);
  else await ctx.store.manifests.delete(ctx.name, ref.digest);
  noContent(res, 202, {});
  ctx.events.emit('delete', 'tag' in ref ? { mediaType: '', digest: '', size: 0, tag: ref.tag } : { mediaType: '', digest: ref.digest.value, size: 0 });
};
