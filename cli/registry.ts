import { mkdirSync } from 'node:fs';
import { FilesystemDriver, createStore } from '../storage/index.js';
import { startRegistry, type RunningRegistry } from '../registry/index.js';
import { parseListen, type RegistryConfig } from './config.js';

/** Runs the registry from a resolved config until `stop` is called. */
export async function runRegistry(cfg: RegistryConfig): Promise<RunningRegistry> {
  mkdirSync(cfg.data, { recursive: true });
  const store = createStore(new FilesystemDriver(cfg.data));
  const { host, port } = parseListen(cfg.listen);
  return startRegistry({
    store,
    host,
    port,
    deleteEnabled: cfg.deleteEnabled,
    uploadMaxAge: cfg.uploadMaxAge * 1000,
    log: (err) => console.error('slipway registry:', err),
  });
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
