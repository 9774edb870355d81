import { MEDIA_TYPES } from '../storage/index.js';
import { RegistryError } from './errors.js';
import type { Handler } from './context.js';
import { pageParams, paginate, sendJson } from './http.js';
import { requestDigest } from './names.js';

/** Page size of _catalog when the client names none, as distribution. */
const CATALOG_PAGE = 100;

export const listTags: Handler = async ({ store, name, query }, _req, res) => {
  const { n, last } = pageParams(query, undefined);
  const tags = await store.manifests.tags(name);
  if (tags.length === 0 && !(await store.manifests.hasRepository(name))) {
    throw new RegistryError('NAME_UNKNOWN', { name }, `repository ${name} is not known to this registry`);
  }
  const { page, link } = paginate(tags, n, last, `/v2/${name}/tags/list`);
  if (link) res.setHeader('Link', link);
  sendJson(res, 200, { name, tags: page });
};

export const catalog: Handler = async ({ store, query }, _req, res) => {
  const { n, last } = pageParams(query, CATALOG_PAGE);
  // One page from the index, plus one name that says whether a next page exists.
  const names = await store.manifests.repositories({ last, limit: n === undefined ? undefined : n + 1 });
  const { page, link } = paginate(names, n, last, '/v2/_catalog');
  if (link) res.setHeader('Link', link);
  sendJson(res, 200, { repositories: page });
};

/** The referrers API: an image index of the manifests whose subject is the digest. */
export const referrers: Handler = async ({ store, name, param, query }, _req, res) => {
  const subject = requestDigest(param);
  let manifests = await store.manifests.referrers(name, subject);
  const artifactType = query.get('artifactType');
  if (artifactType) {
    manifests = manifests.filter((m) => m.artifactType === artifactType);
    res.setHeader('OCI-Filters-Applied', 'artifactType');
  }
  sendJson(res, 200, { schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests }, MEDIA_TYPES.ociIndex);
};
