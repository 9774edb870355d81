/*
 * Build secrets on the wire. `slipway build --secret id=x,src=PATH` reads the file
 * (or variable) on the client's machine and sends its bytes with the build: the
 * POST /api/builds body is then of type SECRETS_CONTENT_TYPE and starts with one
 * JSON line, bounded in size, before the context tar:
 *
 *   {"secrets":[{"id":"x","value":"<base64>"}]}\n<the context tar…>
 *
 * The server reads that line off the stream and leaves the tar in it, so the
 * context is still streamed to storage, never buffered. The worker gets the values
 * back, as the same JSON, from GET /api/builds/<id>/secrets.
 */
import type { Readable } from 'node:stream';
import { BadRequestError } from './spec.js';
import type { BuildSecret } from './types.js';

export const SECRETS_CONTENT_TYPE = 'application/vnd.slipway.build+tar';
/** Largest secrets line accepted (all secrets of a build together, base64 included). */
export const MAX_SECRETS_BYTES = 1 << 20;
const ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;
/** Ids under this prefix are the server's own (e.g. a git source's credentials). */
export const RESERVED_SECRET_PREFIX = 'slipway.';

/** Why a secret id is refused, or null when it is fine for a caller to use. */
export function secretIdProblem(id: string): string | null {
  if (!ID_RE.test(id)) return `secret id ${JSON.stringify(id.slice(0, 80))} must be 1-64 characters of A-Z a-z 0-9 _ . -`;
  if (id.startsWith(RESERVED_SECRET_PREFIX)) return `secret ids starting with "${RESERVED_SECRET_PREFIX}" are reserved: ${id}`;
  return null;
}

/** The JSON of a list of secrets (values base64), as the body line and the worker's answer carry it. */
export function secretsJson(secrets: readonly BuildSecret[]): string {
  return JSON.stringify({ secrets: secrets.map((s) => ({ id: s.id, value: s.value.toString('base64') })) });
}

/** The first line of a build body that carries secrets; throws when they exceed the limit. */
export function secretsLine(secrets: readonly BuildSecret[]): Buffer {
  const line = Buffer.from(`${secretsJson(secrets)}\n`);
  if (line.length > MAX_SECRETS_BYTES) throw new Error(`the build's secrets take ${line.length} bytes encoded; the limit is ${MAX_SECRETS_BYTES}`);
  return line;
}

/** Parses `{"secrets":[{id, value}]}`; `reserved` admits the server's own ids (the worker's side). */
export function parseSecretsJson(text: string, opts: { reserved?: boolean } = {}): BuildSecret[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new BadRequestError('the secrets line is not JSON');
  }
  const list = (doc as { secrets?: unknown } | null)?.secrets;
  if (!Array.isArray(list)) throw new BadRequestError('the secrets line must be {"secrets":[{"id":…,"value":"<base64>"}]}');
  const seen = new Set<string>();
  return list.map((s: { id?: unknown; value?: unknown }) => {
    if (typeof s?.id !== 'string' || typeof s.value !== 'string' || !BASE64_RE.test(s.value)) {
      throw new BadRequestError('each secret needs a string id and a base64 value');
    }
    const problem = secretIdProblem(s.id);
    if (problem && !(opts.reserved && ID_RE.test(s.id))) throw new BadRequestError(problem);
    if (seen.has(s.id)) throw new BadRequestError(`secret ${s.id} is given twice`);
    seen.add(s.id);
    return { id: s.id, value: Buffer.from(s.value, 'base64') };
  });
}

/**
 * Reads the secrets line off the front of `body` (at most MAX_SECRETS_BYTES) and puts
 * back what followed it, so that `body` then reads as the context tar alone.
 */
export async function readSecretsLine(body: Readable, limit = MAX_SECRETS_BYTES): Promise<BuildSecret[]> {
  const parts: Buffer[] = [];
  let size = 0;
  for (;;) {
    const chunk = body.read() as Buffer | null;
    if (chunk === null) {
      if (!(await moreToRead(body))) throw new BadRequestError('the body ended inside its secrets line');
      continue;
    }
    const nl = chunk.indexOf(0x0a);
    if (size + (nl < 0 ? chunk.length : nl) > limit) throw new BadRequestError(`the secrets line is longer than the limit of ${limit} bytes`);
    if (nl < 0) {
      parts.push(chunk);
      size += chunk.length;
      continue;
    }
    parts.push(chunk.subarray(0, nl));
    if (nl + 1 < chunk.length) body.unshift(chunk.subarray(nl + 1));
    return parseSecretsJson(Buffer.concat(parts).toString('utf8'));
  }
}

/** Waits until `body` has data (true) or has ended (false); rejects on its error. */
function moreToRead(body: Readable): Promise<boolean> {
  if (body.readableEnded || body.destroyed) return Promise.resolve(false);
  return new Promise((resolve, reject) => {
    const done = (value: boolean | Error) => {
      body.off('readable', onReadable).off('end', onEnd).off('close', onEnd).off('error', done);
      if (value instanceof Error) reject(value);
      else resolve(value);
    };
    const onReadable = () => done(true);
    const onEnd = () => done(false);
    body.on('readable', onReadable).on('end', onEnd).on('close', onEnd).on('error', done);
  });
}
