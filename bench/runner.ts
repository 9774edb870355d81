/**
 * Runner benchmark, side by side in one run on this machine (DESIGN.md §8):
 *  (a) start latency of a cached image running `true`: `slipway run --rm` (the CLI, end to end)
 *      against raw `runc run` of a bundle of the same busybox layer, `docker run --rm` on a dockerd
 *      the benchmark starts, and `podman run --rm` on private storage; all without a network
 *      (`--network none`; runc: a fresh network namespace), Slipway's bridge shown beside;
 *  (b) pull time of a multi-layer image of random data from a Slipway registry the benchmark
 *      starts: `slipway pull` (fresh runner root), `docker pull`, `podman pull`, `skopeo copy`.
 * Run it through `bash bench/runner [--quick] [--json FILE]`.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Cleanup } from './cleanup.js';
import {
  cleanRuncRoot,
  podman as startPodman,
  PODMAN_BIN,
  RUNC_BIN,
  runcInvocation,
  runcSpecBundle,
  slipwayCli,
  snapshotBuild,
  slipwaySpecBundle,
  type Invocation,
  type Podman,
  type SlipwayCli,
} from './contenders.js';
import { DOCKER_BIN, DOCKERD_BIN, layerStatuses, removeAllImages, startDockerd, type PrivateDockerd } from './docker-daemon.js';
import { pushLayout, SKOPEO_BIN, unpackBaseLayer, writeBenchLayout, type BenchImageLayout } from './oci-image.js';
import { log, settle } from './phase.js';
import { run } from './processes.js';
import { startSlipway, type Registry } from './registries.js';
import { median } from './report.js';
import { pullTable, series, startTable, type Series } from './runner-report.js';

const MiB = 1 << 20;
const START_TARGET = 2;
const RUN_TIMEOUT_MS = 60_000;

interface Plan {
  warmup: number;
  runs: number;
  pullRounds: number;
  dataLayers: number;
  layerBytes: number;
  /** Wall-clock budget of the start phase; it stops early (with fewer runs) past it. */
  startBudgetMs: number;
}
const FULL: Plan = { warmup: 5, runs: 30, pullRounds: 3, dataLayers: 4, layerBytes: 50 * MiB, startBudgetMs: 20 * 60_000 };
const QUICK: Plan = { warmup: 2, runs: 8, pullRounds: 1, dataLayers: 4, layerBytes: 16 * MiB, startBudgetMs: 5 * 60_000 };

const USAGE = `usage: bench/runner [--quick] [--json FILE] [--runs N] [--only start,pull] [--no-docker] [--no-podman] [--compare-cli JS]
  --quick       fewer runs, one pull round of a smaller image: a smoke check
  --json FILE   also write every sample as JSON
  --runs N      timed starts per contender (default ${FULL.runs}, quick ${QUICK.runs}), after ${FULL.warmup} (quick ${QUICK.warmup}) warm-up runs
  --only LIST   run only these parts: start (container start latency), pull (pull time)
  --no-docker   leave docker out (default: included when ${DOCKERD_BIN} exists)
  --no-podman   leave podman out (default: included when ${PODMAN_BIN} exists)
  --compare-cli JS  also time \`node JS run --rm --network none\` (another build's dist/cli/main.js) on the same runner root`;

interface Options {
  plan: Plan;
  parts: Set<'start' | 'pull'>;
  json?: string;
  docker: boolean;
  podman: boolean;
  quick: boolean;
  compareCli?: string;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      json: { type: 'string' },
      runs: { type: 'string' },
      only: { type: 'string' },
      'no-docker': { type: 'boolean', default: false },
      'no-podman': { type: 'boolean', default: false },
      'compare-cli': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const plan = { ...(values.quick ? QUICK : FULL) };
  if (values.runs !== undefined) {
    plan.runs = Number(values.runs);
    if (!Number.isInteger(plan.runs) || plan.runs < 1 || plan.runs > 500) throw new Error(`--runs ${values.runs}: want 1..500`);
  }
  const only = values.only?.split(',').map((p) => p.trim()) ?? ['start', 'pull'];
  for (const p of only) if (p !== 'start' && p !== 'pull') throw new Error(`--only: unknown part ${p} (parts: start, pull)`);
  return {
    plan,
    parts: new Set(only as ('start' | 'pull')[]),
    json: values.json,
    docker: !values['no-docker'] && existsSync(DOCKERD_BIN) && existsSync(DOCKER_BIN),
    podman: !values['no-podman'] && existsSync(PODMAN_BIN),
    quick: values.quick === true,
    compareCli: values['compare-cli'],
  };
}

/** Everything the parts share: the registry with both images pushed, and the tools set up on it. */
interface Setup {
  root: string;
  cleanup: Cleanup;
  registry: Registry;
  busybox: BenchImageLayout;
  busyboxRef: string;
  big?: BenchImageLayout;
  bigRef?: string;
  slipway: SlipwayCli;
  docker?: PrivateDockerd;
  podman?: Podman;
}

async function setUp(opts: Options, root: string, cleanup: Cleanup): Promise<Setup> {
  for (const tool of [RUNC_BIN, SKOPEO_BIN]) if (!existsSync(tool)) throw new Error(`${tool} is missing (apt-get install ${tool.split('/').pop()})`);
  const reg = await startSlipway(join(root, 'registry'));
  const registry = { ...reg, close: cleanup.add('slipway registry', reg.close) };
  log(`slipway registry on ${registry.url} (pid ${registry.process.pid})`);
  const busybox = await writeBenchLayout(join(root, 'layouts', 'busybox'), 'latest');
  const busyboxRef = `${registry.host}/bench/busybox:latest`;
  await pushLayout(busybox, busyboxRef);
  let big: BenchImageLayout | undefined;
  let bigRef: string | undefined;
  if (opts.parts.has('pull')) {
    big = await writeBenchLayout(join(root, 'layouts', 'big'), 'latest', { dataLayers: opts.plan.dataLayers, layerBytes: opts.plan.layerBytes });
    bigRef = `${registry.host}/bench/big:latest`;
    await pushLayout(big, bigRef);
    log(`image ${bigRef}: ${big.layers.length} layers, ${(big.bytes / 1e6).toFixed(0)} MB compressed`);
  }
  const cli = await snapshotBuild(join(root, 'build'));
  const s = await slipwayCli(join(root, 'slipway'), cli);
  const slipway = { ...s, close: cleanup.add('slipway runner root', s.close) };
  let docker: PrivateDockerd | undefined;
  if (opts.docker) {
    // Short path: the daemon's unix socket lives inside it.
    const d = await startDockerd(await mkdtemp('/tmp/swd-'));
    docker = { ...d, stop: cleanup.add('private dockerd', d.stop) };
    log(`private dockerd up in ${d.dir}`);
  }
  let podman: Podman | undefined;
  if (opts.podman) {
    const p = await startPodman(join(root, 'podman'));
    podman = { ...p, close: cleanup.add('podman storage', p.close) };
  }
  return { root, cleanup, registry, busybox, busyboxRef, big, bigRef, slipway, docker, podman };
}

interface Contender {
  series: Series;
  next(): Invocation;
}

/** Runs one invocation to completion (bounded); a failure stops the benchmark, since its numbers would mean nothing. */
async function timeOnce(inv: Invocation): Promise<number> {
  const r = await run(inv.cmd, inv.args, { timeoutMs: RUN_TIMEOUT_MS, env: inv.env });
  return r.ms;
}

async function startContenders(s: Setup, compareCli?: string): Promise<Contender[]> {
  const out: Contender[] = [];
  const add = (key: string, label: string, role: Series['role'], next: () => Invocation) => out.push({ series: series(key, label, role), next });
  const rootfs = join(s.root, 'bundle-rootfs');
  await unpackBaseLayer(s.busybox, rootfs);
  await runcSpecBundle(join(s.root, 'bundle-runc-spec'), rootfs);
  const runcRoot = join(s.root, 'runc');
  s.cleanup.add('raw runc root', () => cleanRuncRoot(runcRoot));
  add('runc', 'raw `runc run` (bundle of `runc spec`, new netns)', 'anchor', runcInvocation(runcRoot, join(s.root, 'bundle-runc-spec')));

  // Slipway's own config.json for a --network none container, run by runc directly: how much of
  // the difference is the runtime spec (cgroup resources, mounts) rather than Slipway's work.
  await s.slipway.cli(['pull', s.busyboxRef], 120_000);
  const id = (await s.slipway.cli(['run', '-d', '--network', 'none', s.busyboxRef, 'sleep', '30'], RUN_TIMEOUT_MS)).stdout.trim();
  const specText = await readFile(join(s.slipway.root, 'containers', id, 'config.json'), 'utf8');
  await s.slipway.cli(['rm', '-f', id], RUN_TIMEOUT_MS);
  await slipwaySpecBundle(join(s.root, 'bundle-slipway-spec'), rootfs, specText);
  add('runc-slipway-spec', 'raw `runc run` of the config.json Slipway writes', 'other', runcInvocation(runcRoot, join(s.root, 'bundle-slipway-spec')));

  add('slipway-none', '`slipway run --rm --network none`', 'slipway', () => s.slipway.invoke(['run', '--rm', '--network', 'none', s.busyboxRef, 'true']));
  if (compareCli) {
    if (!existsSync(compareCli)) throw new Error(`--compare-cli ${compareCli}: no such file`);
    const inv = s.slipway.invoke(['run', '--rm', '--network', 'none', s.busyboxRef, 'true']);
    add('slipway-compare', `\`slipway run --rm --network none\`, the build at ${compareCli}`, 'other', () => ({ ...inv, args: [compareCli, ...inv.args.slice(1)] }));
  }
  add('slipway-bridge', '`slipway run --rm` (bridge: veth pair, address)', 'other', () => s.slipway.invoke(['run', '--rm', s.busyboxRef, 'true']));
  if (s.docker) {
    const d = s.docker;
    await d.docker(['pull', '-q', s.busyboxRef], 120_000);
    const sock = join(d.dir, 'd.sock');
    const env: NodeJS.ProcessEnv = { ...process.env, DOCKER_CONFIG: join(d.dir, 'cfg') };
    delete env.DOCKER_HOST;
    add('docker', '`docker run --rm --network none`', 'other', () => ({ cmd: DOCKER_BIN, args: ['-H', `unix://${sock}`, 'run', '--rm', '--network', 'none', s.busyboxRef, 'true'], env }));
  }
  if (s.podman) {
    const p = s.podman;
    await p.podman(['pull', '-q', '--tls-verify=false', '--signature-policy', join(p.dir, 'policy.json'), s.busyboxRef], 120_000);
    add('podman', '`podman run --rm --network none`', 'other', () => p.invoke(['run', '--rm', '--network', 'none', ...p.runLimits, s.busyboxRef, 'true']));
  }
  // The floor under any Node.js CLI on this machine: the interpreter starting and exiting.
  add('node', '`node -e 0` (a Node.js process, for scale)', 'other', () => ({ cmd: process.execPath, args: ['-e', '0'] }));
  return out;
}

/** Warm-up, then `runs` rounds with every contender once per round, in an order rotated each round. */
async function startPhase(s: Setup, plan: Plan, compareCli?: string): Promise<Series[]> {
  const contenders = await startContenders(s, compareCli);
  log(`start latency: ${contenders.length} contenders, ${plan.warmup} warm-up + ${plan.runs} timed runs each`);
  for (let i = 0; i < plan.warmup; i++) for (const c of contenders) await timeOnce(c.next());
  const deadline = Date.now() + plan.startBudgetMs;
  for (let round = 0; round < plan.runs; round++) {
    const shift = round % contenders.length;
    for (const c of [...contenders.slice(shift), ...contenders.slice(0, shift)]) c.series.samples.push(await timeOnce(c.next()));
    if ((round + 1) % 10 === 0) log(`start latency: ${round + 1}/${plan.runs} rounds; load ${loadavg()[0]?.toFixed(2)}`);
    if (Date.now() > deadline) {
      log(`start latency: budget of ${plan.startBudgetMs / 60_000} min used up after ${round + 1} rounds`);
      break;
    }
  }
  // `run --rm` returns once its container is removed; a build that removes it later gets a few seconds.
  let left = '';
  for (let i = 0; i < 20; i++) {
    left = (await s.slipway.cli(['ps', '-aq'], 30_000)).stdout.trim();
    if (!left) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  if (left) throw new Error(`slipway run --rm left containers behind: ${left}`);
  return contenders.map((c) => c.series);
}

interface Puller {
  series: Series;
  /** Untimed: makes sure the next pull has to fetch every layer. */
  before(round: number): Promise<void>;
  pull(round: number): Promise<void>;
  after(round: number): Promise<void>;
}

function pullers(s: Setup, ref: string, layers: number): Puller[] {
  const out: Puller[] = [];
  const slipwayRoot = (round: number) => join(s.root, `pull-slipway-${round}`);
  out.push({
    series: series('slipway', '`slipway pull` (fresh runner root; download, verify, unpack)', 'slipway'),
    before: async () => {},
    pull: async (round) => {
      const r = await s.slipway.cli(['pull', '--root', slipwayRoot(round), ref], 600_000);
      if (!r.stdout.includes('Digest: sha256:')) throw new Error(`slipway pull ${ref} printed no digest:\n${r.stdout}${r.stderr}`);
    },
    after: (round) => rm(slipwayRoot(round), { recursive: true, force: true }),
  });
  if (s.docker) {
    const d = s.docker;
    out.push({
      series: series('docker', '`docker pull` (download, verify, unpack)', 'anchor'),
      before: () => removeAllImages(d),
      pull: async () => {
        const r = await d.docker(['pull', ref], 600_000);
        const done = layerStatuses(r.stdout)['Pull complete'] ?? 0;
        if (done !== layers) throw new Error(`docker pull ${ref}: ${done} of ${layers} layers pulled:\n${r.stdout}`);
      },
      after: () => removeAllImages(d),
    });
  }
  if (s.podman) {
    const p = s.podman;
    out.push({
      series: series('podman', '`podman pull` (download, verify, unpack)', 'other'),
      before: async () => void (await p.podman(['rmi', '-af'], 120_000)),
      pull: async () => void (await p.podman(['pull', '-q', '--tls-verify=false', '--signature-policy', join(p.dir, 'policy.json'), ref], 600_000)),
      after: async () => void (await p.podman(['rmi', '-af'], 120_000)),
    });
  }
  const skopeoDir = (round: number) => join(s.root, `pull-skopeo-${round}`);
  out.push({
    series: series('skopeo', '`skopeo copy` to dir: (download, verify; no unpack)', 'anchor'),
    before: async () => {},
    pull: async (round) => {
      await run(SKOPEO_BIN, ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${ref}`, `dir:${skopeoDir(round)}`], { timeoutMs: 600_000 });
      if (!existsSync(join(skopeoDir(round), 'manifest.json'))) throw new Error(`skopeo copy of ${ref} wrote no manifest.json`);
    },
    after: (round) => rm(skopeoDir(round), { recursive: true, force: true }),
  });
  return out;
}

async function pullPhase(s: Setup, plan: Plan): Promise<Series[]> {
  const list = pullers(s, s.bigRef!, s.big!.layers.length);
  for (let round = 0; round < plan.pullRounds; round++) {
    const shift = round % list.length;
    for (const p of [...list.slice(shift), ...list.slice(0, shift)]) {
      await p.before(round);
      await settle(s.root);
      const t0 = process.hrtime.bigint();
      await p.pull(round);
      p.series.samples.push(Number(process.hrtime.bigint() - t0) / 1e6);
      await p.after(round);
    }
    log(`pull: round ${round + 1}/${plan.pullRounds} done; load ${loadavg()[0]?.toFixed(2)}`);
  }
  return list.map((p) => p.series);
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) throw new Error('needs root: runc, mounts, network namespaces, dockerd');
  const root = await mkdtemp(join(tmpdir(), 'slipway-rbench-'));
  const cleanup = new Cleanup(async () => rm(root, { recursive: true, force: true }), log);
  cleanup.onSignalsAndDeadline((opts.quick ? 20 : 60) * 60_000);
  const started = new Date();
  let start: Series[] = [];
  let pull: Series[] = [];
  let bigBytes = 0;
  try {
    log(`plan ${JSON.stringify(opts.plan)}, parts ${[...opts.parts].join(',')}, docker ${opts.docker}, podman ${opts.podman}, work dir ${root}`);
    await mkdir(root, { recursive: true });
    const s = await setUp(opts, root, cleanup);
    bigBytes = s.big?.bytes ?? 0;
    if (opts.parts.has('start')) start = await startPhase(s, opts.plan, opts.compareCli);
    if (opts.parts.has('pull')) pull = await pullPhase(s, opts.plan);
  } finally {
    await cleanup.runAll();
  }
  const commit = (await run('git', ['rev-parse', '--short', 'HEAD'], { timeoutMs: 10_000, check: false }).catch(() => null))?.stdout.trim();
  const runcVersion = (await run(RUNC_BIN, ['--version'], { timeoutMs: 10_000, check: false })).stdout.split('\n')[0];
  console.log(`\nSlipway runner ${commit ?? ''}, ${started.toISOString()}, ${cpus().length} cores, ${runcVersion}; every contender in one run, order rotated each round.\n`);
  if (start.length) {
    console.log(startTable(start, 'runc', START_TARGET));
    console.log(`\nMedians after ${opts.plan.warmup} warm-up runs each. Slipway is compared with \`--network none\`, like the others; its bridge row adds a veth pair and an address.\n`);
  }
  if (pull.length) {
    console.log(pullTable(pull, bigBytes, ['docker', 'skopeo']));
    console.log(`\n${opts.plan.dataLayers + 1} layers (busybox + ${opts.plan.dataLayers} × ${opts.plan.layerBytes / MiB} MiB of random data), medians of ${opts.plan.pullRounds}; MB = 10^6 bytes.\n`);
  }
  if (opts.json) {
    const result = (list: Series[]) => list.map((r) => ({ ...r, median: median(r.samples) }));
    await writeFile(opts.json, `${JSON.stringify({ started: started.toISOString(), commit, cores: cpus().length, runc: runcVersion, plan: opts.plan, start: result(start), pull: result(pull), pullBytes: bigBytes }, null, 2)}\n`);
    log(`results written to ${opts.json}`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench/runner: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
