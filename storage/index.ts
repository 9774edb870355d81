export type { FileInfo, FileWriter, ReadOptions, StorageDriver } from './driver.js';
export { PathNotFoundError, StorageUnavailableError } from './driver.js';
export { FilesystemDriver } from './fs-driver.js';
export { S3Driver } from './s3-driver.js';
export { S3StorageError, type S3Options } from './s3-client.js';
export { createDriver, parseStorageSpec, type CreatedDriver, type StorageSpec } from './create-driver.js';
export {
  DIGEST_ALGORITHMS,
  HashingStream,
  InvalidDigestError,
  digestOf,
  isDigest,
  parseDigest,
  type Digest,
  type DigestAlgorithm,
} from './digest.js';
export { StoreError, isStoreError, type StoreErrorKind } from './errors.js';
export type { BlobInfo, BlobStore } from './blobs.js';
export type { UploadStatus, UploadStore, ChunkOptions } from './uploads.js';
export type { ManifestStore, StoredManifest } from './manifests.js';
export {
  MANIFEST_MEDIA_TYPES,
  MAX_MANIFEST_BYTES,
  MEDIA_TYPES,
  ManifestInvalidError,
  isIndexType,
  parseManifest,
  type Descriptor,
  type ParsedManifest,
} from './manifest.js';
export { createStore, purgeUploads, type Store } from './store.js';
export { writeFromBody } from './receive.js';
export { checkIntegrity, type IntegrityReport } from './check.js';
export { collectGarbage, type GcOptions, type GcReport } from './gc.js';
export { GC_DEFAULTS, parseDuration, parseGcSettings, type GcSettings, type RetentionRule } from './gc-config.js';
export { acquireLease, startGcSchedule, type GcSchedule, type GcScheduleConfig } from './gc-schedule.js';
export { listIndexed, walkRepositories } from './catalog-index.js';
