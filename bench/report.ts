import type { RegistryName } from './registries.js';

/**
 * One measured quantity. For throughputs the ratio is slipway / distribution; for times it is
 * distribution / slipway, so a ratio above 1 always means Slipway did better.
 */
export interface Metric {
  key: string;
  label: string;
  unit: string;
  kind: 'throughput' | 'time';
  /** Wanted ratio (DESIGN.md §8). */
  target: number;
  samples: Record<RegistryName, number[]>;
}

export function metric(key: string, label: string, unit: string, kind: Metric['kind'], target: number): Metric {
  return { key, label, unit, kind, target, samples: { distribution: [], slipway: [] } };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

export function ratio(m: Metric): number {
  const d = median(m.samples.distribution);
  const s = median(m.samples.slipway);
  return m.kind === 'throughput' ? s / d : d / s;
}

/** The ratio within each round (both registries measured back to back), showing the spread the noise causes. */
export function roundRatios(m: Metric): number[] {
  const n = Math.min(m.samples.distribution.length, m.samples.slipway.length);
  return Array.from({ length: n }, (_, i) => {
    const d = m.samples.distribution[i] as number;
    const s = m.samples.slipway[i] as number;
    return m.kind === 'throughput' ? s / d : d / s;
  });
}

function fmt(value: number): string {
  if (!Number.isFinite(value)) return '–';
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

/** The results as a Markdown table: metric | distribution | slipway | ratio | target. */
export function markdownTable(metrics: readonly Metric[]): string {
  const rows = metrics
    .filter((m) => m.samples.distribution.length > 0 || m.samples.slipway.length > 0)
    .map((m) => {
      const r = ratio(m);
      const met = Number.isFinite(r) ? (r >= m.target ? 'met' : 'not met') : 'no data';
      const rounds = roundRatios(m);
      const spread = rounds.length > 1 ? `${fmt(Math.min(...rounds))}–${fmt(Math.max(...rounds))}×` : '–';
      // Two decimals, or three where two would round across the target (0.998 is not 1.00).
      const shown = (Number(r.toFixed(2)) >= m.target) === r >= m.target ? r.toFixed(2) : r.toFixed(3);
      return `| ${m.label} (${m.unit}) | ${fmt(median(m.samples.distribution))} | ${fmt(median(m.samples.slipway))} | ${Number.isFinite(r) ? shown : '–'}× | ≥ ${m.target.toFixed(1)}× (${met}) | ${spread} |`;
    });
  return [
    '| metric | distribution | slipway | ratio | target | ratio per round (min–max) |',
    '|---|---:|---:|---:|---|---:|',
    ...rows,
  ].join('\n');
}

export interface CpuSample {
  phase: string;
  registry: RegistryName;
  wallSeconds: number;
  /** CPU seconds of this benchmark's own process (the client) during the timed section; NaN when another program is the client. */
  clientCpu: number;
  /** CPU seconds of the registry process during the timed section. */
  serverCpu: number;
  /** CPU seconds of the storage server (S3: radosgw, OSD, monitor) during the timed section. */
  storageCpu?: number;
}

/** Cores busy, on average, during each phase: shows whether the client, the server or (S3) the storage was the limit. */
export function cpuTable(samples: readonly CpuSample[]): string {
  const phases = [...new Set(samples.map((s) => s.phase))];
  const withStorage = samples.some((s) => s.storageCpu !== undefined);
  const cell = (phase: string, registry: RegistryName) => {
    const own = samples.filter((s) => s.phase === phase && s.registry === registry);
    const wall = own.reduce((n, s) => n + s.wallSeconds, 0);
    if (wall === 0) return withStorage ? '– | – | –' : '– | –';
    const client = own.reduce((n, s) => n + s.clientCpu, 0) / wall;
    const server = own.reduce((n, s) => n + s.serverCpu, 0) / wall;
    const storage = own.reduce((n, s) => n + (s.storageCpu ?? NaN), 0) / wall;
    const cores = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : '–');
    return withStorage ? `${cores(client)} | ${cores(server)} | ${cores(storage)}` : `${cores(client)} | ${cores(server)}`;
  };
  const head = withStorage
    ? ['| phase | client cores (vs distribution) | distribution cores | radosgw cores (distribution) | client cores (vs slipway) | slipway cores | radosgw cores (slipway) |', '|---|---:|---:|---:|---:|---:|---:|']
    : ['| phase | client cores (vs distribution) | distribution cores | client cores (vs slipway) | slipway cores |', '|---|---:|---:|---:|---:|'];
  return [...head, ...phases.map((p) => `| ${p} | ${cell(p, 'distribution')} | ${cell(p, 'slipway')} |`)].join('\n');
}
