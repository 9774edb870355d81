import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { GcReport } from '../storage/index.js';

/*
 * Prometheus metrics of one registry (its own prom-client Registry, so two
 * registries in one process do not share counters). Served at GET /metrics.
 */
export interface RegistryMetrics {
  readonly contentType: string;
  /** One finished request: route name (e.g. `manifest`), method, status, seconds. */
  observeRequest(route: string, method: string, status: number, seconds: number): void;
  bytesIn(n: number): void;
  bytesOut(n: number): void;
  storageError(kind: string): void;
  /** For GC callers (the registry's schedule, `slipway gc`). */
  recordGcRun(report: GcReport): void;
  /** Sampled at scrape; absent without notifications. */
  setBacklogSource(source: () => Promise<Record<string, number>>): void;
  render(): Promise<string>;
}

export function createMetrics(): RegistryMetrics {
  const registry = new Registry();
  const registers = [registry];
  const requests = new Counter({ name: 'slipway_registry_http_requests_total', help: 'HTTP requests by route, method and status', labelNames: ['route', 'method', 'status'], registers });
  const latency = new Histogram({
    name: 'slipway_registry_http_request_duration_seconds',
    help: 'HTTP request latency by route and method',
    labelNames: ['route', 'method'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers,
  });
  const bytesIn = new Counter({ name: 'slipway_registry_bytes_in_total', help: 'Blob bytes received (completed uploads)', registers });
  const bytesOut = new Counter({ name: 'slipway_registry_bytes_out_total', help: 'Blob bytes sent (GETs)', registers });
  const storageErrors = new Counter({ name: 'slipway_registry_storage_errors_total', help: 'Storage failures surfacing in requests, by kind', labelNames: ['kind'], registers });
  const gcRuns = new Counter({ name: 'slipway_registry_gc_runs_total', help: 'Garbage collection runs', labelNames: ['dry_run'], registers });
  const gcBytes = new Counter({ name: 'slipway_registry_gc_bytes_freed_total', help: 'Bytes freed by garbage collection', registers });
  const gcBlobs = new Counter({ name: 'slipway_registry_gc_blobs_swept_total', help: 'Blobs removed by garbage collection', registers });
  let backlogSource: (() => Promise<Record<string, number>>) | null = null;
  new Gauge({
    name: 'slipway_registry_notification_backlog',
    help: 'Notification jobs not yet delivered, by state',
    labelNames: ['state'],
    registers,
    async collect() {
      if (!backlogSource) return;
      const counts = await backlogSource().catch(() => null);
      for (const [state, n] of Object.entries(counts ?? {})) this.set({ state }, n);
    },
  });
  return {
    contentType: registry.contentType,
    observeRequest(route, method, status, seconds) {
      requests.inc({ route, method, status: String(status) });
      latency.observe({ route, method }, seconds);
    },
    bytesIn: (n) => bytesIn.inc(n),
    bytesOut: (n) => bytesOut.inc(n),
    storageError: (kind) => storageErrors.inc({ kind }),
    recordGcRun(report) {
      gcRuns.inc({ dry_run: String(report.dryRun) });
      if (report.dryRun) return;
      gcBytes.inc(report.blobs.bytesFreed);
      gcBlobs.inc(report.blobs.swept);
    },
    setBacklogSource(source) {
      backlogSource = source;
    },
    render: () => registry.metrics(),
  };
}
