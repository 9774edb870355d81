import { createDriver, createStore, parseGcSettings, startGcSchedule } from '../storage/index.js';
import { parseNotificationSettings, startRegistry, type RunningRegistry } from '../registry/index.js';
import { bodyLimits, parseListen, type RegistryConfig } from './config.js';

/**
 * Runs the registry from a resolved config until `stop` is called. `storage`,
 * when set, wins over `data`; S3 storage is checked first (fails naming the endpoint).
 */
export async function runRegistry(cfg: RegistryConfig): Promise<RunningRegistry & { storage: string }> {
  const gc = cfg.gc ? parseGcSettings(cfg.gc, 'gc') : null;
  const notifications = parseNotificationSettings(cfg.notifications, 'notifications');
  if (notifications && !cfg.redis) {
    throw new Error('notifications need Redis for their delivery queue: give --redis URL, SLIPWAY_REDIS_URL or `redis:` in the config file (or remove the notifications section)');
  }
  const { driver, redirect, description } = await createDriver(cfg.storage || cfg.data);
  const store = createStore(driver);
  const { host, port } = parseListen(cfg.listen);
  const running = await startRegistry({
    store,
    host,
    port,
    redirect,
    deleteEnabled: cfg.deleteEnabled,
    uploadMaxAge: cfg.uploadMaxAge * 1000,
    log: (err) => console.error('slipway registry:', err),
    notifications,
    redisUrl: cfg.redis || undefined,
    bodyLimits: bodyLimits(cfg),
  });
  // Storage written before the catalog index existed gets it built now, not on the first _catalog.
  void store.manifests.repositories({ limit: 0 }).catch((err: unknown) => console.error('slipway registry: building the catalog index:', err));
  // Scheduled GC only when the config has a `gc:` section (its interval defaults to 24h there).
  const log = (m: string) => console.error(`slipway registry: ${m}`);
  const schedule = gc && gc.interval > 0 ? startGcSchedule(store, { ...gc, uploadMaxAge: cfg.uploadMaxAge * 1000, onReport: (r) => running.metrics.recordGcRun(r) }, log) : null;
  // The build API and git webhooks, when the registry has a build queue to feed.
  const builder = cfg.redis ? await import('../builder/index.js') : null;
  const builds = builder?.mountBuilder(running.express, {
    redisUrl: cfg.redis,
    store,
    hookSecret: process.env.SLIPWAY_HOOK_SECRET,
    // Workers fetch contexts and secrets here: configured, else this registry's own address.
    publicUrl: process.env.SLIPWAY_PUBLIC_URL || undefined,
    registryUrl: ownUrl(running.url),
    secretsKey: await builder.loadSecretsKey(builder.secretsKeyFile()),
    allowHostNetwork: /^(1|true)$/.test(process.env.SLIPWAY_BUILD_ALLOW_HOST_NETWORK ?? ''),
  });
  // Contexts of builds that no worker ever fetched (lost jobs) are removed after a week.
  const contextJanitor = builder
    ? setInterval(() => void builder.purgeContexts(store, 7 * 24 * 3600_000).catch((err: unknown) => console.error('slipway registry: purging build contexts:', err)), 3600_000)
    : null;
  contextJanitor?.unref();
  const close = async () => {
    if (contextJanitor) clearInterval(contextJanitor);
    await schedule?.stop();
    await running.close();
    await builds?.close();
  };
  return { ...running, close, storage: driver.name === 'filesystem' ? `data in ${description}` : `storage ${description}` };
}

/** The registry's URL as a local worker reaches it: a wildcard listen address means loopback. */
function ownUrl(url: string): string {
  return url.replace('http://0.0.0.0:', 'http://127.0.0.1:').replace('http://[::]:', 'http://[::1]:');
}

/** Stops `stoppable` on SIGTERM/SIGINT and exits. */
export function stopOnSignals(stop: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    console.error(`slipway: ${signal}, stopping`);
    stop().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error('slipway: error while stopping:', err);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}
