/*
 * Image references: `[HOST[:PORT]/]repo[/…][:tag][@algo:hex]`, checked against the OCI
 * distribution grammar (the same one distribution/reference implements). There is no
 * Docker Hub here: a reference without a registry names one on the default registry,
 * `SLIPWAY_REGISTRY` or 127.0.0.1:5000, and gets no `library/` prefix.
 */

export const DEFAULT_REGISTRY = '127.0.0.1:5000';

export interface ImageReference {
  /** `host[:port]`, as it appears in the reference. */
  registry: string;
  /** The repository path inside the registry, e.g. `team/app`. */
  repository: string;
  /** Absent when the reference is by digest only. */
  tag?: string;
  /** `sha256:<hex>`; when present it wins over the tag. */
  digest?: string;
}

export class InvalidReferenceError extends Error {
  constructor(
    readonly input: string,
    reason: string,
  ) {
    super(`invalid image reference "${input}": ${reason}; expected [HOST[:PORT]/]REPO[:TAG] or [HOST[:PORT]/]REPO@sha256:<64 hex>`);
    this.name = 'InvalidReferenceError';
  }
}

const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const IPV6_HOST = /^\[[0-9a-fA-F:.]+\]$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
/** Digests the pull client can verify; anything else is refused up front. */
const VERIFIABLE_DIGEST = /^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const NAME_MAX = 255;

/** The registry a reference without a host goes to. */
export function defaultRegistry(env: NodeJS.ProcessEnv = process.env): string {
  const configured = env.SLIPWAY_REGISTRY?.trim().replace(/^https?:\/\//, '').replace(/\/+$/, '');
  return configured || DEFAULT_REGISTRY;
}

export function parseReference(input: string, opts: { defaultRegistry?: string } = {}): ImageReference {
  const bad = (reason: string): never => {
    throw new InvalidReferenceError(input, reason);
  };
  if (input === '' || input.trim() !== input) bad('it is empty or has surrounding spaces');
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) bad(`"${digest}" is not a digest`);
    if (!VERIFIABLE_DIGEST.test(digest)) bad(`digest "${digest}" is not sha256:<64 lowercase hex> (or sha512)`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) bad(`tag "${tag}" must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
  }
  const { registry, repository } = splitName(rest, opts.defaultRegistry ?? defaultRegistry(), bad);
  if (!digest && !tag) tag = 'latest';
  return digest ? { registry, repository, tag, digest } : { registry, repository, tag };
}

function splitName(name: string, fallback: string, bad: (reason: string) => never): { registry: string; repository: string } {
  if (name === '') bad('the repository name is empty');
  const slash = name.indexOf('/');
  const first = slash < 0 ? '' : name.slice(0, slash);
  // distribution's rule: the first component is a host when it looks like one.
  const hasHost = slash >= 0 && (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase());
  const registry = hasHost ? first : fallback;
  const repository = hasHost ? name.slice(slash + 1) : name;
  if (!validHost(registry)) bad(`registry "${registry}" is not HOST[:PORT]`);
  if (repository === '') bad('the repository name is empty');
  for (const part of repository.split('/')) {
    if (!PATH_COMPONENT.test(part)) bad(`repository component "${part}" must be lowercase letters and digits, separated by ".", "_", "__" or "-"`);
  }
  if (registry.length + 1 + repository.length > NAME_MAX) bad(`the name is longer than ${NAME_MAX} characters`);
  return { registry, repository };
}

function validHost(host: string): boolean {
  const m = /^(.*?)(?::(\d{1,5}))?$/.exec(host);
  if (!m || m[1] === undefined || m[1] === '') return false;
  if (m[2] !== undefined && Number(m[2]) > 65535) return false;
  if (IPV6_HOST.test(m[1])) return true;
  return m[1].split('.').every((part) => DOMAIN_COMPONENT.test(part));
}

/** `host/repo@digest` when pinned by digest, else `host/repo:tag`. */
export function formatReference(ref: ImageReference): string {
  const name = `${ref.registry}/${ref.repository}`;
  return ref.digest ? `${name}@${ref.digest}` : `${name}:${ref.tag ?? 'latest'}`;
}

/** Parses and formats: the one spelling the image store keys references by. */
export function normalizeReference(input: string, opts: { defaultRegistry?: string } = {}): string {
  return formatReference(parseReference(input, opts));
}
