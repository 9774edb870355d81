import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

/** Digest algorithms the registry accepts, with the length of their hex encoding. */
export const DIGEST_ALGORITHMS = { sha256: 64, sha512: 128 } as const;
export type DigestAlgorithm = keyof typeof DIGEST_ALGORITHMS;

export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** `algorithm:hex` */
  value: string;
}

/** The OCI grammar: algorithm ":" encoded. */
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export class InvalidDigestError extends Error {
  constructor(readonly input: string, reason: string) {
    super(`invalid digest ${JSON.stringify(input.slice(0, 200))}: ${reason}`);
  }
}

/** Parses `sha256:…` / `sha512:…`; anything else throws InvalidDigestError. */
export function parseDigest(input: string): Digest {
  if (!DIGEST_GRAMMAR.test(input)) throw new InvalidDigestError(input, 'not of the form algorithm:hex');
  const colon = input.indexOf(':');
  const algorithm = input.slice(0, colon);
  const hex = input.slice(colon + 1);
  if (!(algorithm in DIGEST_ALGORITHMS)) throw new InvalidDigestError(input, `unsupported algorithm ${algorithm}`);
  const length = DIGEST_ALGORITHMS[algorithm as DigestAlgorithm];
  if (hex.length !== length || !/^[a-f0-9]+$/.test(hex)) {
    throw new InvalidDigestError(input, `${algorithm} needs ${length} lower-case hex characters`);
  }
  return { algorithm: algorithm as DigestAlgorithm, hex, value: input };
}

export function isDigest(input: string): boolean {
  try {
    parseDigest(input);
    return true;
  } catch {
    return false;
  }
}

export function digestOf(bytes: Buffer | string, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

/** A length a stream must have exactly, and the error for a stream that has another. */
export interface ExpectedLength {
  bytes: number;
  /** `actual` is the length seen so far: past `bytes` on an overrun, below it at a short end. */
  mismatch(actual: number): Error;
}

/**
 * A pass-through stream that hashes and counts what flows through it, so a body
 * is verified while it is written, never re-read. With `expected`, a chunk that
 * would pass that length fails the stream before any of it goes through, and so
 * does an end short of it.
 */
export class HashingStream extends Transform {
  bytes = 0;
  constructor(
    readonly hash: Hash = createHash('sha256'),
    private readonly expected?: ExpectedLength,
  ) {
    super({ highWaterMark: 256 * 1024 });
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    if (this.expected && this.bytes + chunk.length > this.expected.bytes) return done(this.expected.mismatch(this.bytes + chunk.length));
    this.hash.update(chunk);
    this.bytes += chunk.length;
    done(null, chunk);
  }
  override _flush(done: TransformCallback): void {
    done(this.expected && this.bytes !== this.expected.bytes ? this.expected.mismatch(this.bytes) : null);
  }
}
