import { parseDigest, type Digest } from '../storage/index.js';
import { RegistryError } from './errors.js';

/** Repository name grammar of the OCI Distribution Specification. */
const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
export const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
export const TAG_RE = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** distribution's limit on the whole name. */
export const MAX_NAME_LENGTH = 255;

export function validateName(name: string): string {
  if (name.length > MAX_NAME_LENGTH) {
    throw new RegistryError('NAME_INVALID', { name: name.slice(0, 64) + '…' }, `repository name is longer than ${MAX_NAME_LENGTH} characters`);
  }
  if (!NAME_RE.test(name)) {
    throw new RegistryError('NAME_INVALID', { name }, `invalid repository name ${JSON.stringify(name)}: lower-case components [a-z0-9] separated by '.', '_', '__', '-' and '/'`);
  }
  return name;
}

export function validateTag(tag: string): string {
  if (!TAG_RE.test(tag)) {
    throw new RegistryError('TAG_INVALID', { tag: tag.slice(0, 200) }, `invalid tag ${JSON.stringify(tag.slice(0, 200))}: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`);
  }
  return tag;
}

/** A digest from a request; an unparseable or unsupported one is DIGEST_INVALID. */
export function requestDigest(value: unknown, what = 'digest'): Digest {
  if (typeof value !== 'string' || value === '') throw new RegistryError('DIGEST_INVALID', undefined, `${what} is missing`);
  try {
    return parseDigest(value);
  } catch (err) {
    throw new RegistryError('DIGEST_INVALID', { [what]: value.slice(0, 200) }, (err as Error).message);
  }
}

/** A manifest reference: a digest when it has a ':', else a tag. */
export function parseReference(ref: string): { tag: string } | { digest: Digest } {
  return ref.includes(':') ? { digest: requestDigest(ref, 'reference') } : { tag: validateTag(ref) };
}
