import { median } from './report.js';

/** One contender's timings in one phase of the runner benchmark. */
export interface Series {
  key: string;
  label: string;
  /** What the row is to the comparison: the anchor the ratios are taken to, Slipway (held to the target), or context. */
  role: 'anchor' | 'slipway' | 'other';
  /** Milliseconds. */
  samples: number[];
}

export function series(key: string, label: string, role: Series['role']): Series {
  return { key, label, role, samples: [] };
}

export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (pos - lo);
}

const fmt = (v: number, digits = 0): string => (Number.isFinite(v) ? v.toFixed(digits) : '–');

/** Start latency: median and spread of each contender, its multiple of raw runc, and Slipway's target (≤ `target`×). */
export function startTable(rows: readonly Series[], anchorKey: string, target: number): string {
  const anchor = median(rows.find((r) => r.key === anchorKey)?.samples ?? []);
  const lines = rows
    .filter((r) => r.samples.length > 0)
    .map((r) => {
      const m = median(r.samples);
      const x = m / anchor;
      const goal = r.role === 'slipway' ? `≤ ${target}× (${x <= target ? 'met' : 'not met'})` : r.key === anchorKey ? 'anchor' : '–';
      return `| ${r.label} | ${fmt(m, 1)} | ${fmt(quantile(r.samples, 0.25), 1)}–${fmt(quantile(r.samples, 0.75), 1)} | ${r.samples.length} | ${fmt(x, 2)}× | ${goal} |`;
    });
  return ['| container start of a cached image, `true` | median ms | p25–p75 ms | runs | × raw runc | target |', '|---|---:|---:|---:|---:|---|', ...lines].join('\n');
}

/** Pull time: median seconds, throughput over the compressed bytes, multiples of the anchors' times. */
export function pullTable(rows: readonly Series[], bytes: number, anchors: readonly string[]): string {
  const medians = new Map(rows.map((r) => [r.key, median(r.samples)]));
  const present = anchors.filter((a) => (rows.find((r) => r.key === a)?.samples.length ?? 0) > 0);
  const head = `| pull, ${(bytes / 1e6).toFixed(0)} MB compressed | median s | min–max s | runs | MB/s | ${present.map((a) => `× ${rows.find((r) => r.key === a)!.label.split(' (')[0]}`).join(' | ')} |`;
  const lines = rows
    .filter((r) => r.samples.length > 0)
    .map((r) => {
      const m = medians.get(r.key)!;
      const ratios = present.map((a) => `${fmt(m / medians.get(a)!, 2)}×`);
      return `| ${r.label} | ${fmt(m / 1000, 2)} | ${fmt(Math.min(...r.samples) / 1000, 2)}–${fmt(Math.max(...r.samples) / 1000, 2)} | ${r.samples.length} | ${fmt(bytes / 1e6 / (m / 1000), 0)} | ${ratios.join(' | ')} |`;
    });
  return [head, `|---|---:|---:|---:|---:|${present.map(() => '---:|').join('')}`, ...lines].join('\n');
}
