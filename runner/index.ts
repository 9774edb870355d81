/** The runner: pull and unpack images, run them under runc with cgroups and a network. */
export * from './lifecycle.js';
export * from './network/index.js';
export type { ImageRunConfig, LocalImage, NetworkAttachment, PortMapping } from './types.js';
export { ImageStore, type ImageStoreOptions, type PullOptions, type RemoveResult } from './image-store.js';
export {
  InvalidReferenceError,
  defaultRegistry,
  formatReference,
  normalizeReference,
  parseReference,
  type ImageReference,
} from './reference.js';
export { RegistryClient, RegistryError as PullError } from './registry-client.js';
export { UnsafeLayerError, unpackLayer } from './unpack.js';
export { mountPoints, mountRootfs, unmountRootfs, type MountedRootfs } from './overlay.js';
export { progressPrinter, type LayerPhase, type ProgressListener, type PullProgress } from './progress.js';
// For the builder (RUN steps run in a rootfs it prepares): in-root path and user resolution.
export { resolveUser, secureJoin, type ResolvedUser } from './users.js';
export { DEFAULT_CAPABILITIES, DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS, STANDARD_MOUNTS, nofileLimit } from './spec.js';
export { sandboxResources, type SandboxLimits } from './cgroups.js';
export { parseBytes, parseCount } from './units.js';
export { parseCpus } from './options.js';
export { processAlive } from './pid.js';
export { PRIVATE_FILE_MODE, privateDir, privateRoot } from './private.js';
