import { randomBytes } from 'node:crypto';
import { listObjects, type ListedObject } from './s3-bucket.js';
import type { S3Target } from './s3-client.js';
import type { Segment } from './s3-compose.js';
import type { ObjectHead } from './s3-requests.js';

/*
 * Files that are appended to (upload sessions' data). S3 has no append, and a
 * session's state must live in storage (POST, PATCH and PUT may reach
 * different registry instances), so such a file is a marker object and one
 * object per append:
 *
 *   <key>                                   empty, metadata  x-amz-meta-chunks: <gen>/<size>
 *   <key>.chunks/<gen>/<offset, 16 digits>  the bytes of one append, at that offset
 *
 * The marker's metadata is the truth: the file has <size> bytes, which the
 * chunks of generation <gen> tile from offset 0. An append writes its chunk,
 * then re-writes the marker with the new size; so a stat is one HEAD, a
 * cut-off append changes nothing visible (its chunk, if any, is overwritten by
 * the client's retry at the same offset), and an object without the metadata
 * — whatever its size, also empty — is a plain file, whatever chunk objects
 * lie beside it. A new generation starts when a plain file is first appended
 * to (its bytes are copied server side into chunk 0 first), so leftovers of
 * an older generation can never reappear; they go when the path is deleted or
 * moved. A path component may not end in `.chunks`.
 */
export const CHUNKS = '.chunks';
export const CHUNKS_META = 'chunks';
const OFFSET_DIGITS = 16;

export interface ChunkedState {
  gen: string;
  size: number;
}

export const newGeneration = (): string => randomBytes(6).toString('hex');

/** The chunk state a marker's metadata gives, or null for a plain file. */
export function chunkedState(head: ObjectHead): ChunkedState | null {
  const m = /^([a-f0-9]{1,32})\/(\d{1,16})$/.exec(head.meta(CHUNKS_META) ?? '');
  return m ? { gen: m[1]!, size: Number(m[2]) } : null;
}

export const markerHeaders = (s: ChunkedState): Record<string, string> => ({ [`x-amz-meta-${CHUNKS_META}`]: `${s.gen}/${s.size}` });

export const chunksPrefix = (key: string): string => `${key}${CHUNKS}/`;
export const chunkKey = (key: string, gen: string, offset: number): string => `${chunksPrefix(key)}${gen}/${String(offset).padStart(OFFSET_DIGITS, '0')}`;

/**
 * Every chunk object of `key` (of any generation, for deleting; listed here
 * unless given), and the segments of generation `state.gen` that make up its
 * `state.size` bytes; null segments when they do not (a chunk is missing).
 */
export async function chunkObjects(
  t: S3Target,
  key: string,
  state: ChunkedState | null,
  listed?: readonly ListedObject[],
): Promise<{ all: ListedObject[]; segments: Segment[] | null }> {
  const all: ListedObject[] = [...(listed ?? [])];
  if (!listed) for await (const o of listObjects(t, chunksPrefix(key))) all.push(o);
  const found: (Segment & { offset: number })[] = [];
  const mine = state ? `${chunksPrefix(key)}${state.gen}/` : undefined;
  for (const o of all) {
    if (!mine || !o.name.startsWith(mine)) continue;
    const offset = Number(o.name.slice(mine.length));
    if (Number.isSafeInteger(offset)) found.push({ key: o.name, size: o.size, offset });
  }
  if (!state) return { all, segments: null };
  found.sort((a, b) => a.offset - b.offset);
  const segments: Segment[] = [];
  let next = 0;
  for (const c of found) {
    if (next >= state.size) break;
    if (c.offset !== next) return { all, segments: null };
    segments.push({ key: c.key, size: c.size });
    next += c.size;
  }
  return { all, segments: next === state.size ? segments : null };
}
