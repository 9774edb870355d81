import { createHash } from 'node:crypto';
import type { StorageDriver } from './driver.js';
import { BLOBS, ROOT } from './paths.js';

export interface IntegrityReport {
  blobs: number;
  /** Problems found; empty when the store is sound. */
  problems: string[];
}

/**
 * Checks the invariants every test (and `slipway fsck`) relies on: every file
 * under blobs/ is a `data` file at the path of its own digest, whose bytes hash
 * to that digest, and no temporary file is left anywhere but in upload sessions.
 */
export async function checkIntegrity(driver: StorageDriver): Promise<IntegrityReport> {
  const problems: string[] = [];
  let blobs = 0;
  for await (const info of driver.walk(BLOBS)) {
    const m = /^\/v2\/blobs\/(sha256|sha512)\/([a-f0-9]{2})\/([a-f0-9]+)\/data$/.exec(info.path);
    if (!m || !m[3]!.startsWith(m[2]!)) {
      problems.push(`unexpected file in the blob store: ${info.path}`);
      continue;
    }
    blobs++;
    const hash = createHash(m[1]!);
    for await (const chunk of await driver.reader(info.path)) hash.update(chunk as Buffer);
    const actual = hash.digest('hex');
    if (actual !== m[3]) problems.push(`blob ${m[1]}:${m[3]} holds bytes with digest ${m[1]}:${actual}`);
  }
  for await (const info of driver.walk(ROOT)) {
    if (info.path.includes('.tmp-') && !info.path.includes('/_uploads/')) problems.push(`temporary file left: ${info.path}`);
  }
  return { blobs, problems };
}
