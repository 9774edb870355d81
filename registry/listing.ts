import { MEDIA_TYPES } from '../storage/index.js';
import { RegistryError } from './errors.js';
import type { Handler } from './context.js';
import { pageParams, paginate } from './http.js';
import { requestDigest } from './names.js';

/** Page size of _catalog when the client names none, as distribution. */
const CATALOG_PAGE = 100;

export const listTags: Handler = async ({ store, name }, req, res) => {
  const { n, last } = pageParams(req, undefined);
  const tags = await store.manifests.tags(name);
  if (tags.length === 0 && !(await store.manifests.hasRepository(name))) {
    throw new RegistryError('NAME_UNKNOWN', { name }, `repository ${name} is not known to this registry`);
  }
  const { page, link } = paginate(tags, n, last, `/v2/${name}/tags/list`);
  if (link) res.setHeader('Link', link);
  res.json({ name, tags: page });
};

export const catalog: Handler = async ({ store }, req, res) => {
  const { n, last } = pageParams(req, CATALOG_PAGE);
  const { page, link } = paginate(await store.manifests.repositories(), n, last, '/v2/_catalog');
  if (link) res.setHeader('Link', link);
  res.json({ repositories: page });
};

/** The referrers API: an image index of the manifests whose subject is the digest. */
export const referrers: Handler = async ({ store, name, param }, req, res) => {
  const subject = requestDigest(param);
  let manifests = await store.manifests.referrers(name, subject);
  const { artifactType } = req.query;
  if (typeof artifactType === 'string' && artifactType !== '') {
    manifests = manifests.filter((m) => m.artifactType === artifactType);
    res.setHeader('OCI-Filters-Applied', 'artifactType');
  }
  const body = JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests });
  res.setHeader('Content-Type', MEDIA_TYPES.ociIndex);
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(body);
};
