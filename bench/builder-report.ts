/** Tables of the builder benchmark: medians per tool, ratios against Slipway, and the no-op breakdown. */
import { median } from './report.js';

export interface ToolResult {
  name: 'buildkit' | 'buildah' | 'slipway' | 'executor';
  /** Seconds, one per round. */
  first: number[];
  noop: number[];
  /** Steps reported cached in each no-op rebuild (sanity check). */
  cachedSteps: number[];
}

/** One Slipway no-op rebuild, split: wall time at the CLI vs the server's timestamps. */
export interface Sample {
  wallMs: number;
  queuedMs: number;
  executorMs: number;
  /** Record created → finished, on the server. */
  serverMs: number;
  cliHelpMs: number;
  nodeBareMs: number;
  /** The same no-op rebuild through bench/builder-cli-light.ts (no builder/index.ts import). */
  lightCliMs: number;
}

const LABEL: Record<ToolResult['name'], string> = {
  buildkit: 'BuildKit (`DOCKER_BUILDKIT=1 docker build`, private dockerd)',
  buildah: '`buildah bud --layers --runtime runc`',
  slipway: 'Slipway (`slipway build`, end to end from the CLI)',
  executor: 'Slipway executor alone (`build()` in-process, warm; info)',
};

const s = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : '–');
const x = (v: number) => (Number.isFinite(v) ? `${v.toFixed(2)}×` : '–');

export function resultTable(results: readonly ToolResult[], fallback: boolean): string {
  const sw = results.find((r) => r.name === 'slipway');
  const swFirst = median(sw?.first ?? []);
  const swNoop = median(sw?.noop ?? []);
  const rows = results.map((r) => {
    const first = median(r.first);
    const noop = median(r.noop);
    const cached = `${Math.min(...r.cachedSteps)}–${Math.max(...r.cachedSteps)}`;
    let ratios = '–';
    let target = '–';
    if (r.name === 'buildkit' || r.name === 'buildah') {
      ratios = `first ${x(first / swFirst)}, no-op ${x(noop / swNoop)}`;
      const perRound = r.noop.map((v, i) => v / (sw?.noop[i] ?? NaN));
      ratios += ` (no-op per round ${x(Math.min(...perRound))}–${x(Math.max(...perRound))})`;
    }
    if (r.name === 'buildkit') target = `no-op: Slipway ≤ BuildKit (${swNoop <= noop ? 'met' : 'not met'})`;
    if (r.name === 'slipway' && fallback) target = 'CLI/server stand-ins, see below';
    return `| ${LABEL[r.name]} | ${s(first)} | ${s(noop)} | ${cached} | ${ratios} | ${target} |`;
  });
  return [
    '| tool | first build s | no-op rebuild s | cached steps in no-op | ratio vs Slipway (their time / Slipway\'s) | target |',
    '|---|---:|---:|---:|---|---|',
    ...rows,
  ].join('\n');
}

export function breakdownTable(samples: readonly Sample[]): string {
  const m = (f: (x: Sample) => number) => median(samples.map(f));
  const wall = m((x) => x.wallMs);
  const server = m((x) => x.serverMs);
  const rows: Array<[string, number]> = [
    ['wall time at the CLI (spawn → exit)', wall],
    ['`node -e 0` (bare Node start-up)', m((x) => x.nodeBareMs)],
    ['`build --help` (Node + the CLI\'s module loading)', m((x) => x.cliHelpMs)],
    ['server: record created → finished', server],
    ['  of which queued (created → worker started)', m((x) => x.queuedMs)],
    ['  of which on the worker (started → finished)', m((x) => x.executorMs)],
    ['same no-op through a light client (bench/builder-cli-light.ts: no builder/index.ts import)', m((x) => x.lightCliMs)],
    ['client side outside the server\'s span (start-up, packing, upload, log tail, exit)', wall - server],
  ];
  return ['| part | ms |', '|---|---:|', ...rows.map(([k, v]) => `| ${k} | ${Number.isFinite(v) ? v.toFixed(0) : '–'} |`)].join('\n');
}
