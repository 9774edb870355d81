/**
 * Registry benchmark: CNCF distribution 2.8 (Debian's docker-registry) and Slipway side by side,
 * in one run on this machine, over the same disk (or, with `--storage s3`, on the same radosgw,
 * each in its own buckets); prints a Markdown table of medians and ratios against the targets of
 * DESIGN.md §8 and issue 6. Run it through `bash bench/registry [--quick] [--no-docker] [--storage s3]`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Cleanup } from './cleanup.js';
import { DOCKERD_BIN, type BenchImage } from './docker-daemon.js';
import { dockerPhase } from './docker-phase.js';
import { httpPhases, type HttpMetrics, type HttpPlan } from './http-phases.js';
import { countStorageCpu, log, type PhaseContext } from './phase.js';
import { run } from './processes.js';
import { DISTRIBUTION_BIN, type RegistryOptions } from './registries.js';
import { cpuTable, markdownTable, median, metric, ratio, roundRatios, type CpuSample, type Metric } from './report.js';
import { startS3Backend } from './s3-backend.js';

const MiB = 1 << 20;
const PHASES = ['blobs', 'small', 'manifest', 'docker'] as const;
type Phase = (typeof PHASES)[number];
type Storage = 'fs' | 's3';

interface Plan {
  rounds: number;
  bigBlobs: number;
  smallBlobs: number;
  wrkSeconds: number;
  dockerRounds: number;
}
const FULL: Plan = { rounds: 5, bigBlobs: 8, smallBlobs: 200, wrkSeconds: 5, dockerRounds: 3 };
const QUICK: Plan = { rounds: 1, bigBlobs: 4, smallBlobs: 40, wrkSeconds: 2, dockerRounds: 1 };
/** Big blobs: DESIGN.md §8's size on the filesystem; issue 6's on S3. */
const BIG_BLOB: Record<Storage, number> = { fs: 64 * MiB, s3: 32 * MiB };
const BIG_PARALLEL = 4;
const SMALL_BLOB = MiB;
const SMALL_PARALLEL = 8;
/** Phases run when --only is not given: on S3 the small-blob phase is left out (issue 6 has no figure for it). */
const DEFAULT_PHASES: Record<Storage, Phase[]> = { fs: [...PHASES], s3: ['blobs', 'manifest', 'docker'] };

const USAGE = `usage: bench/registry [--quick] [--docker|--no-docker] [--json FILE] [--rounds N] [--storage fs|s3]
                      [--only blobs,small,manifest,docker] [--dist-cache] [--profile DIR]
  --quick       fewer rounds and blobs, a smoke check
  --docker      also time docker push/pull through a private dockerd (default when ${DOCKERD_BIN} exists)
  --json FILE   also write the results (with every sample) as JSON
  --rounds N    rounds of the HTTP phases (default ${FULL.rounds}, quick ${QUICK.rounds}); docker rounds stay ${FULL.dockerRounds}/${QUICK.dockerRounds}
  --storage S   fs (default): both on the local disk; s3: both on one radosgw started for the run
                (distribution's s3 driver, Slipway's --storage s3://…), and redirected pulls too
  --only LIST   run only these phases (default ${DEFAULT_PHASES.fs.join(',')}; with s3 ${DEFAULT_PHASES.s3.join(',')})
  --dist-cache  give distribution the in-memory blob descriptor cache of Debian's default config
  --profile DIR run Slipway under node --cpu-prof, profiles written to DIR`;

interface Options {
  plan: Plan;
  phases: Set<Phase>;
  json?: string;
  registry: RegistryOptions;
  quick: boolean;
  storage: Storage;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      docker: { type: 'boolean' },
      'no-docker': { type: 'boolean' },
      json: { type: 'string' },
      rounds: { type: 'string' },
      only: { type: 'string' },
      'dist-cache': { type: 'boolean', default: false },
      profile: { type: 'string' },
      storage: { type: 'string', default: 'fs' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const plan = { ...(values.quick ? QUICK : FULL) };
  if (values.rounds !== undefined) {
    plan.rounds = Number(values.rounds);
    if (!Number.isInteger(plan.rounds) || plan.rounds < 1 || plan.rounds > 50) throw new Error(`--rounds ${values.rounds}: want 1..50`);
  }
  const storage = values.storage as Storage;
  if (storage !== 'fs' && storage !== 's3') throw new Error(`--storage ${values.storage}: want fs or s3`);
  const only = values.only?.split(',').map((p) => p.trim()) ?? DEFAULT_PHASES[storage];
  for (const p of only) if (!PHASES.includes(p as Phase)) throw new Error(`--only: unknown phase ${p} (phases: ${PHASES.join(', ')})`);
  const phases = new Set(only as Phase[]);
  const docker = values['no-docker'] ? false : (values.docker ?? existsSync(DOCKERD_BIN));
  if (!docker) phases.delete('docker');
  const profile = values.profile;
  return {
    plan,
    phases,
    json: values.json,
    quick: values.quick === true,
    storage,
    registry: {
      distributionCache: values['dist-cache'],
      slipwayNodeArgs: profile ? ['--cpu-prof', '--cpu-prof-dir', profile] : [],
    },
  };
}

function metricsFor(storage: Storage) {
  const big = `${BIG_BLOB[storage] / MiB} MiB × ${BIG_PARALLEL} parallel`;
  const http: HttpMetrics = {
    blobPush: metric('blob_push', `blob push, ${big}`, 'MB/s', 'throughput', 1),
    blobPull: metric('blob_pull', `blob pull${storage === 's3' ? ' (proxied)' : ''}, ${big}`, 'MB/s', 'throughput', 1),
    blobPullRedirected: storage === 's3' ? metric('blob_pull_redirected', `blob pull (redirected, client follows the 307), ${big}`, 'MB/s', 'throughput', 1) : undefined,
    manifestGet: metric('manifest_get', 'manifest GET by tag, wrk -t2 -c16', 'req/s', 'throughput', 5),
    smallPush: metric('small_push', `small blob push, 1 MiB × ${SMALL_PARALLEL} parallel`, 'blobs/s', 'throughput', 1),
    smallPull: metric('small_pull', `small blob pull, 1 MiB × ${SMALL_PARALLEL} parallel`, 'blobs/s', 'throughput', 1),
  };
  return { http, dockerPush: metric('docker_push', 'docker push', 's', 'time', 1), dockerPull: metric('docker_pull', 'docker pull', 's', 'time', 1) };
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  for (const tool of [DISTRIBUTION_BIN, ...(opts.phases.has('manifest') ? ['/usr/bin/wrk'] : [])]) {
    if (!existsSync(tool)) throw new Error(`${tool} is missing (apt-get install ${tool.endsWith('wrk') ? 'wrk' : 'docker-registry'})`);
  }
  const root = await mkdtemp(join(tmpdir(), 'slipway-bench-'));
  const cleanup = new Cleanup(async () => rm(root, { recursive: true, force: true }), log);
  cleanup.onSignalsAndDeadline((opts.quick ? 20 : 60) * 60_000);
  const cpu: CpuSample[] = [];
  const started = new Date();
  const metrics = metricsFor(opts.storage);
  let image: BenchImage | undefined;
  try {
    log(`plan ${JSON.stringify(opts.plan)}, phases ${[...opts.phases].join(',')}, storage ${opts.storage}, work dir ${root}`);
    const registry = { ...opts.registry };
    if (opts.storage === 's3') {
      const s3 = await startS3Backend(cleanup);
      registry.s3 = s3;
      countStorageCpu(s3.pids);
    }
    const ctx: PhaseContext = { root, cleanup, cpu, registry };
    const plan: HttpPlan = { ...opts.plan, bigBlob: BIG_BLOB[opts.storage], bigParallel: BIG_PARALLEL, smallBlob: SMALL_BLOB, smallParallel: SMALL_PARALLEL, phases: opts.phases };
    if (['blobs', 'small', 'manifest'].some((p) => opts.phases.has(p as Phase))) await httpPhases(plan, ctx, metrics.http);
    if (opts.phases.has('docker')) image = await dockerPhase(ctx, opts.plan.dockerRounds, metrics.dockerPush, metrics.dockerPull);
  } finally {
    await cleanup.runAll();
  }
  const all = [...Object.values(metrics.http).filter((m): m is Metric => m !== undefined), metrics.dockerPush, metrics.dockerPull];
  const commit = (await run('git', ['rev-parse', '--short', 'HEAD'], { timeoutMs: 10_000, check: false }).catch(() => null))?.stdout.trim();
  const where = opts.storage === 's3' ? ', both on one radosgw (Ceph 16, bluestore) in buckets of their own' : '';
  console.log(`\nSlipway ${commit ?? ''} vs distribution 2.8 (Debian docker-registry)${where}, ${started.toISOString()}, ${cpus().length} cores, medians of ${opts.plan.rounds} rounds (docker: ${opts.plan.dockerRounds}); MB = 10^6 bytes; ratio > 1 means Slipway is better.\n`);
  console.log(markdownTable(all));
  console.log(`\nCPU during the timed sections (cores busy on average):\n`);
  console.log(cpuTable(cpu));
  if (opts.json) {
    const results = all.map((m) => ({
      key: m.key,
      label: m.label,
      unit: m.unit,
      kind: m.kind,
      target: m.target,
      distribution: median(m.samples.distribution),
      slipway: median(m.samples.slipway),
      ratio: ratio(m),
      roundRatios: roundRatios(m),
      samples: m.samples,
    }));
    const doc = { started: started.toISOString(), commit, storage: opts.storage, cores: cpus().length, plan: opts.plan, phases: [...opts.phases], distributionCache: opts.registry.distributionCache, image, results, cpu };
    await writeFile(opts.json, `${JSON.stringify(doc, null, 2)}\n`);
    log(`results written to ${opts.json}`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench/registry: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
