import { parseDigest, type Digest } from './digest.js';

export const MEDIA_TYPES = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;

export const MANIFEST_MEDIA_TYPES: readonly string[] = Object.values(MEDIA_TYPES);
export const isIndexType = (t: string): boolean => t === MEDIA_TYPES.ociIndex || t === MEDIA_TYPES.dockerList;

/** Largest manifest accepted, as distribution and the big public registries do. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  annotations?: Record<string, string>;
  artifactType?: string;
  platform?: { architecture: string; os: string; variant?: string; 'os.version'?: string; 'os.features'?: string[] };
}

/** What a stored manifest says about the content it needs. */
export interface ParsedManifest {
  mediaType: string;
  /** Blobs (config and layers) that must exist in the repository; foreign layers excluded. */
  blobs: Digest[];
  /** Child manifests of an index. */
  manifests: Descriptor[];
  subject?: Descriptor;
  /** artifactType for the referrers API: the field, else the config's media type. */
  artifactType?: string;
  annotations?: Record<string, string>;
}

export class ManifestInvalidError extends Error {}

/** Layer types that a registry does not have to hold (they carry `urls`). */
const FOREIGN_LAYERS = new Set([
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
]);

/**
 * Parses and checks a manifest's bytes. `contentType` is the type the client
 * declared (PUT) or null (re-reading a stored manifest). The media type comes
 * from the body's `mediaType` when present, else from `contentType`; a
 * disagreement between the two is invalid.
 */
export function parseManifest(bytes: Buffer, contentType: string | null): ParsedManifest {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ManifestInvalidError(`manifest is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(doc)) throw new ManifestInvalidError('manifest is not a JSON object');
  if (doc.schemaVersion !== 2) throw new ManifestInvalidError(`unsupported schemaVersion ${JSON.stringify(doc.schemaVersion)}`);
  const declared = contentType?.split(';')[0]?.trim() || null;
  const inBody = typeof doc.mediaType === 'string' ? doc.mediaType : null;
  if (doc.mediaType !== undefined && inBody === null) throw new ManifestInvalidError('mediaType must be a string');
  if (inBody && declared && MANIFEST_MEDIA_TYPES.includes(declared) && inBody !== declared) {
    throw new ManifestInvalidError(`mediaType ${inBody} does not match Content-Type ${declared}`);
  }
  const mediaType = inBody ?? (declared && MANIFEST_MEDIA_TYPES.includes(declared) ? declared : guessType(doc));
  if (!MANIFEST_MEDIA_TYPES.includes(mediaType)) throw new ManifestInvalidError(`unsupported manifest media type ${mediaType}`);
  const subject = doc.subject === undefined ? undefined : descriptor(doc.subject, 'subject');
  const annotations = stringMap(doc.annotations, 'annotations');
  const artifactType = optionalString(doc.artifactType, 'artifactType');

  if (isIndexType(mediaType)) {
    if (!Array.isArray(doc.manifests)) throw new ManifestInvalidError('index has no manifests array');
    if (doc.config !== undefined || doc.layers !== undefined) throw new ManifestInvalidError(`${mediaType} cannot have config or layers`);
    const manifests = doc.manifests.map((m, i) => descriptor(m, `manifests[${i}]`));
    return { mediaType, blobs: [], manifests, subject, artifactType, annotations };
  }
  if (doc.manifests !== undefined) throw new ManifestInvalidError(`${mediaType} cannot have manifests`);
  const config = descriptor(doc.config, 'config');
  if (!Array.isArray(doc.layers)) throw new ManifestInvalidError('manifest has no layers array');
  const layers = doc.layers.map((l, i) => descriptor(l, `layers[${i}]`));
  if (mediaType === MEDIA_TYPES.dockerManifest && layers.length === 0) {
    throw new ManifestInvalidError('a docker image manifest needs at least one layer');
  }
  const blobs = [config, ...layers.filter((l) => !(FOREIGN_LAYERS.has(l.mediaType) && l.urls?.length))].map((d) =>
    parseDigest(d.digest),
  );
  return { mediaType, blobs, manifests: [], subject, artifactType: artifactType ?? config.mediaType, annotations };
}

function guessType(doc: Record<string, unknown>): string {
  if (Array.isArray(doc.manifests)) return MEDIA_TYPES.ociIndex;
  return MEDIA_TYPES.ociManifest;
}

function descriptor(value: unknown, where: string): Descriptor {
  if (!isObject(value)) throw new ManifestInvalidError(`${where} is not a descriptor object`);
  const { mediaType, digest, size } = value;
  if (typeof mediaType !== 'string' || mediaType === '') throw new ManifestInvalidError(`${where}.mediaType is missing`);
  if (typeof digest !== 'string') throw new ManifestInvalidError(`${where}.digest is missing`);
  try {
    parseDigest(digest);
  } catch (err) {
    throw new ManifestInvalidError(`${where}.digest: ${(err as Error).message}`);
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw new ManifestInvalidError(`${where}.size must be a non-negative integer`);
  }
  const out: Descriptor = { mediaType, digest, size };
  if (value.urls !== undefined) {
    if (!Array.isArray(value.urls) || value.urls.some((u) => typeof u !== 'string')) throw new ManifestInvalidError(`${where}.urls must be strings`);
    out.urls = value.urls as string[];
  }
  const annotations = stringMap(value.annotations, `${where}.annotations`);
  if (annotations) out.annotations = annotations;
  const artifactType = optionalString(value.artifactType, `${where}.artifactType`);
  if (artifactType) out.artifactType = artifactType;
  if (isObject(value.platform)) out.platform = value.platform as unknown as Descriptor['platform'];
  return out;
}

function stringMap(value: unknown, where: string): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value) || Object.values(value).some((v) => typeof v !== 'string')) {
    throw new ManifestInvalidError(`${where} must map strings to strings`);
  }
  return value as Record<string, string>;
}

function optionalString(value: unknown, where: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new ManifestInvalidError(`${where} must be a string`);
  return value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
