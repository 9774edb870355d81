export { BuildError, type BuildFunction, type BuildLogger, type BuildOptions, type BuildRequest, type BuildResult, type BuildSecret, type BuildStep } from './types.js';
export { build } from './executor.js';
export { mountBuilder, buildsRouter, type BuilderRoutesOptions } from './api.js';
export { BuildQueue, type BuildJobData, type EnqueueOptions, type QueueOptions, type SubmittedBuild } from './queue.js';
export { startBuildWorker, type BuildWorkerOptions, type RunningWorker } from './worker.js';
export { getRecord, listRecords, type BuildRecord, type BuildSpec, type BuildSource, type BuildStatus, type BuildFailure } from './records.js';
export { readLog, followLog, type LogEntry } from './logs.js';
export { packContext, extractContext, purgeContexts, type PackStats } from './build-context.js';
export { buildQuery, parseBuildQuery, validateRef } from './spec.js';
export { addTrigger, listTriggers, removeTrigger, type Trigger } from './triggers.js';
export { SECRETS_KEY_ENV, loadSecretsKey, secretsKeyFile } from './seal.js';
export { redactUrl, redactUrls } from './redact.js';
export {
  DEFAULT_PREFIX,
  QUEUE_NAME,
  RedisUnreachableError,
  checkRedis,
  connectRedis,
  startRedisServer,
  type RedisServer,
} from './redis.js';
