/*
 * A build's secrets while it waits and runs: one Redis hash per build (secret id →
 * value sealed under the registry's key, aad "<build id>/<secret id>", so a value
 * cannot be moved to another build or id). Only the registry process holds the key;
 * workers get the values from it (GET /api/builds/<id>/secrets, with the build's
 * capability token). The hash is deleted when the build ends (records.ts finishRecord),
 * when its record is pruned, and expires anyway after a week (a build lost otherwise).
 */
import type { Redis } from 'ioredis';
import { keys } from './redis.js';
import { seal, unseal } from './seal.js';
import type { BuildSecret } from './types.js';

const EXPIRE_SECONDS = 7 * 24 * 3600;
const aad = (buildId: string, secretId: string) => `${buildId}/${secretId}`;

export async function storeSecrets(redis: Redis, prefix: string, key: Buffer, buildId: string, secrets: readonly BuildSecret[]): Promise<void> {
  if (secrets.length === 0) return;
  const k = keys(prefix).secrets(buildId);
  const fields = secrets.flatMap((s) => [s.id, seal(key, s.value, aad(buildId, s.id))]);
  await redis.multi().hset(k, ...fields).expire(k, EXPIRE_SECONDS).exec();
}

/** The build's secrets in clear (none when it has none, or they were deleted). */
export async function loadSecrets(redis: Redis, prefix: string, key: Buffer, buildId: string): Promise<BuildSecret[]> {
  const hash = await redis.hgetall(keys(prefix).secrets(buildId));
  return Object.entries(hash).map(([id, sealed]) => ({ id, value: unseal(key, sealed, aad(buildId, id)) }));
}
