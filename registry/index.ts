export { createRegistryApp, type RegistryAppOptions } from './app.js';
export { startRegistry, type RegistryServerOptions, type RunningRegistry } from './server.js';
export { BODY_LIMIT_DEFAULTS, type BodyLimits } from './body-guard.js';
export { ERROR_CODES, RegistryError, type ErrorCode } from './errors.js';
export { NAME_RE, TAG_RE } from './names.js';
export type { RegistryOptions } from './context.js';
export { createMetrics, type RegistryMetrics } from './metrics.js';
export {
  EVENTS_MEDIA_TYPE,
  parseNotificationSettings,
  type Endpoint,
  type EventAction,
  type NotificationSettings,
  type RegistryEvent,
} from './notifications.js';
