/**
 * Registry benchmark: CNCF distribution 2.8 (Debian's docker-registry) and Slipway side by side,
 * in one run on this machine, over the same disk; prints a Markdown table of medians and ratios
 * against the targets of DESIGN.md §8. Run it through `bash bench/registry [--quick] [--no-docker]`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent } from 'node:http';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { PayloadSource, pullBlob, pushBlob, timed, verifyBlob, type Payload } from './blob-load.js';
import { Cleanup } from './cleanup.js';
import { DOCKERD_BIN, type BenchImage } from './docker-daemon.js';
import { dockerPhase } from './docker-phase.js';
import { pool } from './http-client.js';
import { checkManifestGet, pushSmallImage, wrkManifest } from './manifest-load.js';
import { log, measured, settle, startPair, type PhaseContext } from './phase.js';
import { run } from './processes.js';
import { DISTRIBUTION_BIN, orderFor, REGISTRIES, type RegistryName, type RegistryOptions } from './registries.js';
import { cpuTable, markdownTable, median, metric, ratio, roundRatios, type CpuSample, type Metric } from './report.js';

const MiB = 1 << 20;
const PHASES = ['blobs', 'small', 'manifest', 'docker'] as const;
type Phase = (typeof PHASES)[number];

interface Plan {
  rounds: number;
  bigBlobs: number;
  smallBlobs: number;
  wrkSeconds: number;
  dockerRounds: number;
}
const FULL: Plan = { rounds: 5, bigBlobs: 8, smallBlobs: 200, wrkSeconds: 5, dockerRounds: 3 };
const QUICK: Plan = { rounds: 1, bigBlobs: 4, smallBlobs: 40, wrkSeconds: 2, dockerRounds: 1 };
const BIG_BLOB = 64 * MiB;
const BIG_PARALLEL = 4;
const SMALL_BLOB = MiB;
const SMALL_PARALLEL = 8;

const USAGE = `usage: bench/registry [--quick] [--docker|--no-docker] [--json FILE] [--rounds N]
                      [--only blobs,small,manifest,docker] [--dist-cache] [--profile DIR]
  --quick       fewer rounds and blobs, a smoke check
  --docker      also time docker push/pull through a private dockerd (default when ${DOCKERD_BIN} exists)
  --json FILE   also write the results (with every sample) as JSON
  --rounds N    rounds of the HTTP phases (default ${FULL.rounds}, quick ${QUICK.rounds}); docker rounds stay ${FULL.dockerRounds}/${QUICK.dockerRounds}
  --only LIST   run only these phases
  --dist-cache  give distribution the in-memory blob descriptor cache of Debian's default config
  --profile DIR run Slipway under node --cpu-prof, profiles written to DIR`;

interface Options {
  plan: Plan;
  phases: Set<Phase>;
  json?: string;
  registry: RegistryOptions;
  quick: boolean;
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
  const only = values.only?.split(',').map((p) => p.trim()) ?? [...PHASES];
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
    registry: {
      distributionCache: values['dist-cache'],
      slipwayNodeArgs: profile ? ['--cpu-prof', '--cpu-prof-dir', profile] : [],
    },
  };
}

const METRICS = {
  blobPush: metric('blob_push', `blob push, 64 MiB × ${BIG_PARALLEL} parallel`, 'MB/s', 'throughput', 1),
  blobPull: metric('blob_pull', `blob pull, 64 MiB × ${BIG_PARALLEL} parallel`, 'MB/s', 'throughput', 1),
  manifestGet: metric('manifest_get', 'manifest GET by tag, wrk -t2 -c16', 'req/s', 'throughput', 5),
  smallPush: metric('small_push', `small blob push, 1 MiB × ${SMALL_PARALLEL} parallel`, 'blobs/s', 'throughput', 1),
  smallPull: metric('small_pull', `small blob pull, 1 MiB × ${SMALL_PARALLEL} parallel`, 'blobs/s', 'throughput', 1),
  dockerPush: metric('docker_push', 'docker push', 's', 'time', 1),
  dockerPull: metric('docker_pull', 'docker pull', 's', 'time', 1),
};

/** Blob push/pull, small blobs and manifest GETs against one long-lived pair of registries. */
async function httpPhases(opts: Options, ctx: PhaseContext): Promise<void> {
  const { plan, phases } = opts;
  const { root, cleanup, cpu } = ctx;
  const regs = await startPair(join(root, 'http'), ctx.registry, cleanup);
  const agents = Object.fromEntries(REGISTRIES.map((n) => [n, new Agent({ keepAlive: true, maxSockets: 16 })])) as Record<RegistryName, Agent>;
  const closeAgents = cleanup.add('http agents', async () => Object.values(agents).forEach((a) => a.destroy()));
  const big = new PayloadSource(BIG_BLOB);
  const small = new PayloadSource(SMALL_BLOB);
  const manifestRepo = 'bench/manifest';

  // Untimed: every registry answers correctly before anything is measured.
  for (const name of REGISTRIES) {
    const { url } = regs[name];
    const [warm] = big.make(1) as [Payload];
    await pushBlob(agents[name], url, 'bench/warmup', warm);
    await verifyBlob(agents[name], url, 'bench/warmup', warm);
    const smalls = small.make(SMALL_PARALLEL);
    await pool(smalls, SMALL_PARALLEL, (b) => pushBlob(agents[name], url, 'bench/warmup', b));
    await verifyBlob(agents[name], url, 'bench/warmup', smalls[0] as Payload);
    if (phases.has('manifest')) {
      const digest = await pushSmallImage(agents[name], url, manifestRepo, 'latest');
      await checkManifestGet(agents[name], url, manifestRepo, 'latest', digest);
    }
  }

  const spot: { name: RegistryName; repo: string; blob: Payload }[] = [];
  for (let round = 0; round < plan.rounds; round++) {
    const order = orderFor(round);
    if (phases.has('blobs')) {
      const repo = `bench/big-r${round}`;
      const blobs = Object.fromEntries(order.map((n) => [n, big.make(plan.bigBlobs)])) as Record<RegistryName, Payload[]>;
      for (const n of order) {
        await settle(root);
        const t = await measured(cpu, 'blob push', regs[n], true, () => timed(blobs[n], BIG_PARALLEL, (b) => pushBlob(agents[n], regs[n].url, repo, b)));
        METRICS.blobPush.samples[n].push(t.bytes / 1e6 / t.seconds);
        spot.push({ name: n, repo, blob: blobs[n][0] as Payload });
      }
      // Every blob twice, so a measurement lasts about as long as the push did.
      const twice = (list: Payload[]) => [...list, ...list];
      for (const n of order) {
        const t = await measured(cpu, 'blob pull', regs[n], true, () => timed(twice(blobs[n]), BIG_PARALLEL, (b) => pullBlob(agents[n], regs[n].url, repo, b)));
        METRICS.blobPull.samples[n].push(t.bytes / 1e6 / t.seconds);
      }
    }
    if (phases.has('small')) {
      const repo = `bench/small-r${round}`;
      const blobs = Object.fromEntries(order.map((n) => [n, small.make(plan.smallBlobs)])) as Record<RegistryName, Payload[]>;
      for (const n of order) {
        await settle(root);
        const t = await measured(cpu, 'small push', regs[n], true, () => timed(blobs[n], SMALL_PARALLEL, (b) => pushBlob(agents[n], regs[n].url, repo, b)));
        METRICS.smallPush.samples[n].push(t.ops / t.seconds);
        spot.push({ name: n, repo, blob: blobs[n][plan.smallBlobs - 1] as Payload });
      }
      for (const n of order) {
        const t = await measured(cpu, 'small pull', regs[n], true, () => timed(blobs[n], SMALL_PARALLEL, (b) => pullBlob(agents[n], regs[n].url, repo, b)));
        METRICS.smallPull.samples[n].push(t.ops / t.seconds);
      }
    }
    if (phases.has('manifest')) {
      for (const n of order) {
        const url = `${regs[n].url}/v2/${manifestRepo}/manifests/latest`;
        const w = await measured(cpu, 'manifest GET (client: wrk)', regs[n], false, () => wrkManifest(url, plan.wrkSeconds));
        if (w.non2xx > 0) throw new Error(`${n}: wrk saw ${w.non2xx} non-2xx responses to GET ${url}`);
        if (w.socketErrors) log(`${n}: wrk ${w.socketErrors}`);
        METRICS.manifestGet.samples[n].push(w.requestsPerSecond);
      }
    }
    log(`round ${round + 1}/${plan.rounds} done (${order.join(' first, then ')}); load ${loadavg()[0]?.toFixed(2)}`);
  }
  // Untimed: what was pushed in the timed rounds reads back with the right digest.
  for (const { name, repo, blob } of spot) await verifyBlob(agents[name], regs[name].url, repo, blob);
  await closeAgents();
  for (const n of REGISTRIES) await regs[n].close();
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
  let image: BenchImage | undefined;
  try {
    log(`plan ${JSON.stringify(opts.plan)}, phases ${[...opts.phases].join(',')}, work dir ${root}`);
    const ctx: PhaseContext = { root, cleanup, cpu, registry: opts.registry };
    if (['blobs', 'small', 'manifest'].some((p) => opts.phases.has(p as Phase))) await httpPhases(opts, ctx);
    if (opts.phases.has('docker')) image = await dockerPhase(ctx, opts.plan.dockerRounds, METRICS.dockerPush, METRICS.dockerPull);
  } finally {
    await cleanup.runAll();
  }
  const metrics: Metric[] = Object.values(METRICS);
  const commit = (await run('git', ['rev-parse', '--short', 'HEAD'], { timeoutMs: 10_000, check: false }).catch(() => null))?.stdout.trim();
  console.log(`\nSlipway ${commit ?? ''} vs distribution 2.8 (Debian docker-registry), ${started.toISOString()}, ${cpus().length} cores, medians of ${opts.plan.rounds} rounds (docker: ${opts.plan.dockerRounds}); MB = 10^6 bytes; ratio > 1 means Slipway is better.\n`);
  console.log(markdownTable(metrics));
  console.log(`\nCPU during the timed sections (cores busy on average):\n`);
  console.log(cpuTable(cpu));
  if (opts.json) {
    const results = metrics.map((m) => ({
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
    const doc = { started: started.toISOString(), commit, cores: cpus().length, plan: opts.plan, phases: [...opts.phases], distributionCache: opts.registry.distributionCache, image, results, cpu };
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
