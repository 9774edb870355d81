import type { Digest } from './digest.js';

/*
 * The storage layout, relative to the driver's root. Blob bytes live once, by
 * digest; everything per repository is a small link file naming a digest.
 *
 *   /v2
 *   ├── blobs/<alg>/<hex[0:2]>/<hex>/data          blob or manifest bytes, immutable
 *   └── repositories/<name...>/
 *       ├── _layers/<alg>/<hex>/link                 blob is part of this repository
 *       ├── _manifests/
 *       │   ├── revisions/<alg>/<hex>/link           manifest is in this repository
 *       │   ├── tags/<tag>/current/link              digest the tag points at now
 *       │   ├── tags/<tag>/index/<alg>/<hex>/link    every digest the tag has pointed at
 *       │   └── referrers/<alg>/<subject hex>/<alg>-<hex>
 *       │                                            descriptor (JSON) of a manifest whose
 *       │                                            subject is that digest
 *       └── _uploads/<uuid>/
 *           ├── data                                 bytes received so far
 *           └── state                                JSON: offset, digest of the prefix, start time
 *
 * A blob becomes visible only by the move of a verified upload's data into
 * blobs/; the link files are written after that, each atomically.
 */
export const ROOT = '/v2';
export const BLOBS = `${ROOT}/blobs`;
export const REPOSITORIES = `${ROOT}/repositories`;

export const blobDir = (d: Digest): string => `${BLOBS}/${d.algorithm}/${d.hex.slice(0, 2)}/${d.hex}`;
export const blobData = (d: Digest): string => `${blobDir(d)}/data`;

export const repoDir = (name: string): string => `${REPOSITORIES}/${name}`;
export const layerLink = (name: string, d: Digest): string => `${repoDir(name)}/_layers/${d.algorithm}/${d.hex}/link`;
export const layersDir = (name: string): string => `${repoDir(name)}/_layers`;

export const manifestsDir = (name: string): string => `${repoDir(name)}/_manifests`;
export const revisionLink = (name: string, d: Digest): string =>
  `${manifestsDir(name)}/revisions/${d.algorithm}/${d.hex}/link`;
export const revisionsDir = (name: string): string => `${manifestsDir(name)}/revisions`;
export const tagsDir = (name: string): string => `${manifestsDir(name)}/tags`;
export const tagDir = (name: string, tag: string): string => `${tagsDir(name)}/${tag}`;
export const tagCurrentLink = (name: string, tag: string): string => `${tagDir(name, tag)}/current/link`;
export const tagIndexLink = (name: string, tag: string, d: Digest): string =>
  `${tagDir(name, tag)}/index/${d.algorithm}/${d.hex}/link`;
export const referrersDir = (name: string, subject: Digest): string =>
  `${manifestsDir(name)}/referrers/${subject.algorithm}/${subject.hex}`;
export const referrerEntry = (name: string, subject: Digest, d: Digest): string =>
  `${referrersDir(name, subject)}/${d.algorithm}-${d.hex}`;

export const uploadsDir = (name: string): string => `${repoDir(name)}/_uploads`;
export const uploadDir = (name: string, uuid: string): string => `${uploadsDir(name)}/${uuid}`;
export const uploadData = (name: string, uuid: string): string => `${uploadDir(name, uuid)}/data`;
export const uploadState = (name: string, uuid: string): string => `${uploadDir(name, uuid)}/state`;
