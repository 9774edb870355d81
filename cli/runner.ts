/** `slipway run`, `ps`, `logs`, `stop`, … : docker's container and image verbs over the runner. */
import type { ChildProcess } from 'node:child_process';
import { Command, Option } from 'commander';
import {
  BadOptionError,
  ImageStore,
  RUN_FLAGS,
  Runner,
  StartError,
  humanDuration,
  progressPrinter,
  runnerPaths,
  signalName,
  type AttachStreams,
  type LocalImage,
  type RunFlags,
} from '../runner/index.js';
import { dismissStandby } from './standby.js';

interface RootFlags {
  root?: string;
  runcRoot?: string;
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

function withRoots(cmd: Command): Command {
  return cmd
    .option('--root <dir>', 'runner state directory (SLIPWAY_RUNNER_ROOT; default /var/lib/slipway/runner)')
    .option('--runc-root <dir>', "runc's state directory (SLIPWAY_RUNC_ROOT; default /run/slipway/runc)");
}

interface Session {
  runner: Runner;
  /** The node's image store (in the runner root), opened on first use. */
  store(): ImageStore;
}

/** Runs `fn` with a runner and image store for `flags`; the store's connections are closed after. */
async function session<T>(flags: RootFlags, fn: (s: Session) => Promise<T>): Promise<T> {
  let store: ImageStore | undefined;
  const s: Session = {
    runner: new Runner({
      root: flags.root,
      runcRoot: flags.runcRoot,
      images: {
        get: (ref) => s.store().get(ref),
        pull: (ref) => {
          process.stderr.write(`Unable to find image '${ref}' locally\n`);
          return pullWithProgress(s.store(), ref);
        },
      },
    }),
    store: () => (store ??= new ImageStore(runnerPaths({ root: flags.root }).root, { inUse: () => s.runner.imagesInUse() })),
  };
  try {
    return await fn(s);
  } finally {
    store?.close();
  }
}

async function pullWithProgress(store: ImageStore, ref: string): Promise<LocalImage> {
  const printer = progressPrinter(process.stderr);
  try {
    return await store.pull(ref, { onProgress: printer });
  } finally {
    printer.finish();
  }
}

/** Applies `fn` to each container named; reports each failure and fails at the end, as docker does. */
async function each(refs: string[], fn: (ref: string) => Promise<void>, echo = true): Promise<void> {
  let failed = 0;
  for (const ref of refs) {
    try {
      await fn(ref);
      if (echo) console.log(ref);
    } catch (err) {
      failed++;
      console.error(`slipway: ${(err as Error).message}`);
    }
  }
  if (failed) process.exitCode = 1;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('').trimEnd()).join('\n');
}

function registerRun(program: Command, standby: ChildProcess | undefined): void {
  const cmd = withRoots(program.command('run').description('create and start a container').argument('<image>').argument('[command...]'));
  cmd.helpOption('--help', 'display help for command').passThroughOptions();
  for (const f of RUN_FLAGS) cmd.addOption(f.repeat ? new Option(f.flags, f.help).argParser(collect) : new Option(f.flags, f.help));
  cmd.action(async (image: string, command: string[], opts: RunFlags & RootFlags & { healthcheck?: boolean }) => {
    const flags: RunFlags = { ...opts, noHealthcheck: opts.healthcheck === false };
    try {
      process.exitCode = await session(opts, (s) => runContainer(s.runner, image, command, flags, standby));
    } catch (err) {
      console.error(`slipway: ${(err as Error).message}`);
      const message = (err as Error).message;
      process.exitCode = err instanceof StartError && /no such file|not found/i.test(message) ? 127 : err instanceof StartError && /permission denied/i.test(message) ? 126 : 125;
    }
  });
}

async function runContainer(runner: Runner, image: string, command: string[], flags: RunFlags, standby: ChildProcess | undefined): Promise<number> {
  if (flags.tty && !process.stdin.isTTY) throw new BadOptionError('the input device is not a TTY: -t needs a terminal on stdin (drop -t, or run it from a terminal)');
  if (flags.tty && flags.detach) throw new BadOptionError('-t with -d is not supported: a detached container has no terminal here; drop -t');
  if (flags.tty) {
    dismissStandby(standby);
    return (await runner.runTerminal({ image, cmd: command, flags })).exitCode;
  }
  const attach: AttachStreams = { stdout: process.stdout, stderr: process.stderr, ...(flags.interactive ? { stdin: process.stdin } : {}) };
  // Signals to this client go to the container, as docker's sig-proxy does.
  let forwardTo: string | undefined;
  const forward = (sig: NodeJS.Signals) => void runner.kill(forwardTo!, sig).catch(() => {});
  const proxySignals = (id: string) => {
    forwardTo = id;
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, forward);
  };
  if (flags.rm && !flags.detach) {
    // A container that lives and dies with this command: supervised right here (containers.ts).
    dismissStandby(standby);
    try {
      return (await runner.runAttached({ image, cmd: command, flags }, attach, { onCreated: proxySignals })).exitCode;
    } finally {
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, forward);
      if (flags.interactive) process.stdin.destroy();
    }
  }
  const id = await runner.create({ image, cmd: command, flags });
  if (flags.detach) {
    await runner.start(id, undefined, { standby }).catch(async (err: unknown) => {
      if (flags.rm) await runner.rm(id, { force: true, volumes: true }).catch(() => {});
      throw err;
    });
    console.log(id);
    return 0;
  }
  proxySignals(id);
  try {
    const launched = await runner.start(id, attach, { standby });
    const { exitCode } = await launched.exited!;
    return exitCode;
  } finally {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, forward);
    if (flags.interactive) process.stdin.destroy();
  }
}

function registerPs(program: Command): void {
  withRoots(program.command('ps').description('list containers'))
    .option('-a, --all', 'show all containers (default: running ones)')
    .option('-q, --quiet', 'only ids')
    .option('--no-trunc', 'do not shorten ids and commands')
    .action(async (opts: RootFlags & { all?: boolean; quiet?: boolean; trunc: boolean }) => {
      const list = await session(opts, (s) => s.runner.ps({ all: opts.all }));
      const id = (s: string) => (opts.trunc ? s.slice(0, 12) : s);
      if (opts.quiet) return list.forEach((c) => console.log(id(c.Id)));
      const command = (c: string) => (opts.trunc && c.length > 22 ? `${c.slice(0, 20)}…"` : c);
      const rows = list.map((c) => [id(c.Id), c.Image, command(c.Command), `${humanDuration(Date.now() - Date.parse(c.Created))} ago`, c.Status, c.Ports, c.Names]);
      console.log(table([['CONTAINER ID', 'IMAGE', 'COMMAND', 'CREATED', 'STATUS', 'PORTS', 'NAMES'], ...rows]));
    });
}

function registerContainerVerbs(program: Command): void {
  withRoots(program.command('logs').description("print a container's logs").argument('<container>'))
    .option('-f, --follow', 'keep printing until the container stops')
    .option('-n, --tail <n>', 'only the last N lines')
    .option('-t, --timestamps', 'show timestamps')
    .action(async (ref: string, opts: RootFlags & { follow?: boolean; tail?: string; timestamps?: boolean }) => {
      const tail = opts.tail === undefined || opts.tail === 'all' ? undefined : Number(opts.tail);
      if (tail !== undefined && !Number.isInteger(tail)) throw new BadOptionError(`--tail ${opts.tail}: expected a number or "all"`);
      await session(opts, (s) => s.runner.logs(ref, { stdout: process.stdout, stderr: process.stderr }, { follow: opts.follow, tail, timestamps: opts.timestamps }));
    });
  withRoots(program.command('stop').description('stop containers (stop signal, then SIGKILL)').argument('<container...>'))
    .option('-t, --time <seconds>', 'seconds to wait before killing')
    .action((refs: string[], opts: RootFlags & { time?: string }) => {
      const time = opts.time === undefined ? undefined : Number(opts.time);
      if (time !== undefined && !(Number.isInteger(time) && time >= 0)) throw new BadOptionError(`--time ${opts.time}: expected a whole number of seconds`);
      return session(opts, (s) => each(refs, (ref) => s.runner.stop(ref, { time })));
    });
  withRoots(program.command('kill').description('send a signal to containers').argument('<container...>'))
    .option('-s, --signal <signal>', 'signal to send', 'SIGKILL')
    .action((refs: string[], opts: RootFlags & { signal: string }) => session(opts, (s) => each(refs, (ref) => s.runner.kill(ref, signalName(opts.signal)))));
  withRoots(program.command('rm').description('remove containers').argument('<container...>'))
    .option('-f, --force', 'kill and remove running containers')
    .option('-v, --volumes', 'remove their anonymous volumes too')
    .action((refs: string[], opts: RootFlags & { force?: boolean; volumes?: boolean }) => session(opts, (s) => each(refs, (ref) => s.runner.rm(ref, opts))));
  withRoots(program.command('pause').description('freeze all processes of containers').argument('<container...>')).action((refs: string[], opts: RootFlags) =>
    session(opts, (s) => each(refs, (ref) => s.runner.pause(ref))),
  );
  withRoots(program.command('unpause').description('thaw paused containers').argument('<container...>')).action((refs: string[], opts: RootFlags) =>
    session(opts, (s) => each(refs, (ref) => s.runner.unpause(ref))),
  );
  const exec = withRoots(program.command('exec').description('run a command in a running container').argument('<container>').argument('<command...>'));
  exec
    .passThroughOptions()
    .option('-i, --interactive', 'attach stdin')
    .option('-t, --tty', 'allocate a terminal')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable', collect)
    .option('-u, --user <user[:group]>', 'user to run as')
    .option('-w, --workdir <dir>', 'working directory')
    .action(async (ref: string, argv: string[], opts: RootFlags & { interactive?: boolean; tty?: boolean; env?: string[]; user?: string; workdir?: string }) => {
      process.exitCode = await session(opts, (s) => s.runner.exec(ref, argv, opts));
    });
  withRoots(program.command('inspect').description('show containers (or images) as JSON').argument('<name...>')).action(async (refs: string[], opts: RootFlags) => {
    const docs = await session(opts, async (s) => {
      const out: unknown[] = [];
      for (const ref of refs) out.push(await s.runner.inspect(ref).catch(async (err: Error) => (await s.store().get(ref)) ?? Promise.reject(err)));
      return out;
    });
    console.log(JSON.stringify(docs, null, 4));
  });
}

function registerImageVerbs(program: Command): void {
  withRoots(program.command('images').description('list pulled images'))
    .option('-q, --quiet', 'only ids')
    .action(async (opts: RootFlags & { quiet?: boolean }) => {
      const list = await session(opts, (s) => s.store().list());
      const short = (id: string) => id.replace(/^sha256:/, '').slice(0, 12);
      if (opts.quiet) return [...new Set(list.map((i) => short(i.id)))].forEach((id) => console.log(id));
      const rows = list.map((i) => {
        const at = i.reference.lastIndexOf('@');
        const colon = i.reference.lastIndexOf(':');
        const [repo, tag] = at >= 0 ? [i.reference.slice(0, at), '<none>'] : colon > i.reference.lastIndexOf('/') ? [i.reference.slice(0, colon), i.reference.slice(colon + 1)] : [i.reference, 'latest'];
        return [repo, tag, short(i.id), i.created ? `${humanDuration(Date.now() - Date.parse(i.created))} ago` : '', `${(i.size / 1e6).toFixed(1)}MB`];
      });
      console.log(table([['REPOSITORY', 'TAG', 'IMAGE ID', 'CREATED', 'SIZE'], ...rows]));
    });
  withRoots(program.command('pull').description('pull an image from a registry').argument('<image>')).action(async (ref: string, opts: RootFlags) => {
    const image = await session(opts, (s) => pullWithProgress(s.store(), ref));
    console.log(`Digest: ${image.manifestDigest}\nStatus: downloaded ${image.reference}`);
  });
  withRoots(program.command('rmi').description('remove images').argument('<image...>'))
    .option('-f, --force', 'remove even if containers use it')
    .action((refs: string[], opts: RootFlags & { force?: boolean }) =>
      session(opts, (s) =>
        each(
          refs,
          async (ref) => {
            const result = await s.store().remove(ref, { force: opts.force });
            for (const u of result.untagged) console.log(`Untagged: ${u}`);
            for (const d of result.deleted) console.log(`Deleted: ${d}`);
          },
          false,
        ),
      ),
    );
}

/**
 * Adds the runner's verbs to `program` (which gets positional options, so `run IMAGE CMD -x`
 * passes -x on); `run` uses the `standby` supervisor when one was started ahead (standby.ts).
 */
export function registerRunnerCommands(program: Command, opts: { standby?: ChildProcess } = {}): void {
  program.enablePositionalOptions();
  registerRun(program, opts.standby);
  registerPs(program);
  registerContainerVerbs(program);
  registerImageVerbs(program);
}
