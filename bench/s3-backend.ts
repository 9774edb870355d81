import type { Cleanup } from './cleanup.js';
import { log } from './phase.js';
import type { S3Storage } from './registries.js';
import { randomBucket, startRadosgw } from '../test/harness/radosgw.js';

/**
 * `bench/registry --storage s3`: one throw-away radosgw (Ceph's S3 gateway, the
 * test harness's single-node cluster on loopback, shared/S3-TEST-SERVER.md) that
 * both registries store on, each in buckets of its own. Stopped by `cleanup`.
 */
export async function startS3Backend(cleanup: Cleanup): Promise<S3Storage & { pids(): number[] }> {
  const started = Date.now();
  const s3 = await startRadosgw();
  cleanup.add('radosgw', () => s3.stop());
  log(`radosgw on ${s3.endpoint} in ${((Date.now() - started) / 1000).toFixed(1)} s (data in ${s3.dir})`);
  return {
    endpoint: s3.endpoint,
    accessKey: s3.accessKey,
    secretKey: s3.secretKey,
    newBucket: async (label) => {
      const bucket = randomBucket(label);
      await s3.createBucket(bucket);
      return bucket;
    },
    pids: () => s3.pids(),
  };
}
