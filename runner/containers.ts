/**
 * The container lifecycle API the CLI uses. Stateless: every call reads the files under the
 * runner root and asks runc; the per-container supervisors (shim.ts) do the running.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { finished } from 'node:stream/promises';
import { mkdir, rm } from 'node:fs/promises';
import { validateResources } from './cgroups.js';
import * as control from './control.js';
import { mergeHealth } from './health.js';
import { inspectDocument, observe, summary, type ContainerSummary, type RunnerContext } from './inspect.js';
import { launchShim, StartError, type AttachStreams, type Launched } from './launcher.js';
import { writeLogs, type LogSink } from './log-reader.js';
import type { ContainerConfig, ContainerRecord, RuntimeState } from './model.js';
import { parseRunFlags, type ConfigOverrides, type RunFlags } from './options.js';
import { runnerPaths, type RootOptions, type RunnerPaths } from './paths.js';
import { privateRoot } from './private.js';
import { removeContainerFiles } from './remove.js';
import { findRunc, Runc } from './runc.js';
import { generateName, initialState, listIds, readRecord, releaseName, reserveName, resolveId, writeJsonAtomic, writeState } from './state.js';
import { supervise } from './supervisor.js';
import type { LocalImage, PortMapping } from './types.js';
import { mergeEnv, signalName } from './units.js';
import { removeAnonymousVolumes, resolveMounts } from './volumes.js';

/** Where images come from: the ImageStore fits. */
export interface ImageSource {
  get(ref: string): Promise<LocalImage | undefined | null>;
  pull(ref: string): Promise<LocalImage>;
}

export interface RunnerOptions extends RootOptions {
  images?: ImageSource;
  env?: NodeJS.ProcessEnv;
}

export interface CreateRequest {
  /** A reference (looked up, pulled when missing) or an image at hand. */
  image: string | LocalImage;
  cmd?: string[];
  flags?: RunFlags;
}

export class Runner implements RunnerContext {
  readonly paths: RunnerPaths;
  private driver: Runc | undefined;
  private readonly env: NodeJS.ProcessEnv;

  constructor(private readonly opts: RunnerOptions = {}) {
    this.env = opts.env ?? process.env;
    this.paths = runnerPaths(opts, this.env);
  }

  runc(): Runc {
    return (this.driver ??= new Runc(this.paths.runcRoot, findRunc(this.env)));
  }

  resolve(ref: string): Promise<string> {
    // A full id with a record (what create returned) needs no scan of every container.
    if (/^[0-9a-f]{64}$/.test(ref) && existsSync(this.paths.container(ref).record)) return Promise.resolve(ref);
    return resolveId(this.paths, ref);
  }

  private async image(image: string | LocalImage): Promise<LocalImage> {
    if (typeof image !== 'string') return image;
    if (!this.opts.images) throw new Error(`no image store to find ${image} in`);
    return (await this.opts.images.get(image)) ?? (await this.opts.images.pull(image));
  }

  /** Checks everything that can be checked up front, then writes the container's record. */
  async create(req: CreateRequest): Promise<string> {
    this.runc();
    const parsed = parseRunFlags(req.flags ?? {}, this.env);
    await validateResources(parsed.hostConfig);
    await privateRoot(this.paths.root, 'the runner root');
    const image = await this.image(req.image);
    const id = randomBytes(32).toString('hex');
    const name = parsed.name ?? generateName();
    await reserveName(this.paths, name, id).catch(async (err: Error) => {
      if (parsed.name) throw err;
      await reserveName(this.paths, `${name}_${id.slice(0, 6)}`, id);
    });
    const cp = this.paths.container(id);
    let rec: ContainerRecord | undefined;
    try {
      await mkdir(cp.dir, { recursive: true, mode: 0o700 });
      const config = containerConfig(id, typeof req.image === 'string' ? req.image : image.reference, image, req.cmd ?? [], parsed.overrides, parsed.hostConfig.PortBindings);
      const mounts = await resolveMounts(this.paths, parsed.hostConfig.Binds, parsed.hostConfig.Tmpfs, Object.keys(image.config.Volumes ?? {}));
      const argv = [...config.Entrypoint, ...config.Cmd];
      rec = { Id: id, Name: name, Created: new Date().toISOString(), Image: image.id, ImageRef: config.Image, Path: argv[0] ?? '', Args: argv.slice(1), Config: config, HostConfig: parsed.hostConfig, Mounts: mounts, LayerDirs: image.layerDirs };
      await writeJsonAtomic(cp.record, rec);
      await writeState(this.paths, id, initialState());
      return id;
    } catch (err) {
      if (rec) await removeAnonymousVolumes(rec.Mounts);
      await rm(cp.dir, { recursive: true, force: true });
      await releaseName(this.paths, name, id);
      throw err;
    }
  }

  /**
   * Starts the supervisor (or wakes `standby`, one started ahead: see launcher.ts); with `attach`,
   * the first run's output goes there too and `exited` reports its end (for `--rm`, its removal).
   */
  async start(ref: string, attach?: AttachStreams, opts: { standby?: ChildProcess } = {}): Promise<Launched> {
    const id = await this.resolve(ref);
    const o = await observe(this, id);
    if (o.status === 'running' || o.status === 'paused' || o.status === 'restarting' || o.supervised) throw new control.StateError(`container ${id.slice(0, 12)} is already running`);
    if (o.rec.Config.Tty) throw new control.StateError(`container ${id.slice(0, 12)} was created with -t: it runs only in the foreground, on the terminal of the command that made it`);
    return launchShim(this.paths, this.runc(), id, attach, { awaitSupervisor: o.rec.HostConfig.AutoRemove, standby: opts.standby });
  }

  /** create + start; without `attach` (-d) it returns once the container runs. */
  async run(req: CreateRequest, attach?: AttachStreams): Promise<{ id: string; exitCode?: number; oomKilled?: boolean }> {
    if (req.flags?.tty) throw new control.StateError('a container with -t runs on this process\'s terminal: use runTerminal');
    const id = await this.create(req);
    try {
      const launched = await launchShim(this.paths, this.runc(), id, attach, { awaitSupervisor: !!req.flags?.rm });
      if (!launched.exited) return { id };
      return { id, ...(await launched.exited) };
    } catch (err) {
      if (err instanceof StartError && req.flags?.rm) await this.rm(id, { force: true, volumes: true }).catch(() => {});
      throw err;
    }
  }

  /**
   * A foreground `run --rm`: this process supervises, as for `-t`, instead of a supervisor process
   * of its own (a second Node.js process costs ~60–80 ms of CPU, more than runc itself). The
   * output goes to `attach` and to the log; it resolves once the container is over and removed.
   * The price: a client killed with SIGKILL leaves its container unsupervised (no log, no --rm;
   * `ps`/`rm` clean up after it, as after a supervisor crash), where docker would keep it going.
   */
  async runAttached(req: CreateRequest, attach: AttachStreams, opts: { onCreated?(id: string): void } = {}): Promise<{ id: string; exitCode: number; oomKilled: boolean }> {
    const id = await this.create(req);
    opts.onCreated?.(id);
    // supervise() ends the streams it is given after the first run; the caller's stay open.
    const [stdout, stderr] = [attach.stdout, attach.stderr].map((target) => {
      const through = new PassThrough();
      through.pipe(target, { end: false });
      return through;
    }) as [PassThrough, PassThrough];
    let started = false;
    let failure: string | undefined;
    let exit: { exitCode: number; oomKilled: boolean } | undefined;
    const final = await supervise({
      paths: this.paths,
      id,
      runc: this.runc(),
      terminal: false,
      attach: { stdout, stderr, ...(attach.stdin ? { stdin: attach.stdin } : {}) },
      events: (e) => {
        if (e.event === 'started') started = true;
        else if (e.event === 'error') failure = e.message;
        else exit = e;
      },
    });
    // Ended by supervise() after a run; not when the container could not be prepared.
    for (const through of [stdout, stderr]) if (!through.writableEnded) through.end();
    await Promise.all([finished(stdout), finished(stderr)]).catch(() => {});
    if (failure !== undefined || !started) {
      if (req.flags?.rm) await this.rm(id, { force: true, volumes: true }).catch(() => {});
      throw new StartError(failure ?? final.Error ?? `container ${id.slice(0, 12)} did not start`);
    }
    return { id, exitCode: exit?.exitCode ?? final.ExitCode, oomKilled: exit?.oomKilled ?? final.OOMKilled };
  }

  /** `-t`: this process supervises, runc runs on its terminal; resolves with the last exit code. */
  async runTerminal(req: CreateRequest): Promise<{ id: string; exitCode: number }> {
    const id = await this.create(req);
    let startError: string | undefined;
    const final: RuntimeState = await supervise({
      paths: this.paths,
      id,
      runc: this.runc(),
      terminal: true,
      events: (e) => {
        if (e.event === 'error') startError = e.message;
      },
    });
    if (startError) throw new StartError(startError);
    return { id, exitCode: final.ExitCode };
  }

  stop(ref: string, opts: { time?: number } = {}): Promise<void> {
    return this.resolve(ref).then((id) => control.stop(this, id, opts.time));
  }

  kill(ref: string, signal = 'SIGKILL'): Promise<void> {
    return this.resolve(ref).then((id) => control.kill(this, id, signal));
  }

  pause(ref: string): Promise<void> {
    return this.resolve(ref).then((id) => control.pause(this, id));
  }

  unpause(ref: string): Promise<void> {
    return this.resolve(ref).then((id) => control.unpause(this, id));
  }

  exec(ref: string, argv: string[], req: control.ExecRequest = {}): Promise<number> {
    return this.resolve(ref).then((id) => control.exec(this, id, argv, req));
  }

  execOutput(ref: string, argv: string[], req: control.ExecRequest = {}): ReturnType<typeof control.execOutput> {
    return this.resolve(ref).then((id) => control.execOutput(this, id, argv, req));
  }

  /** Removes a stopped container (a running one only with `force`); named volumes stay. */
  async rm(ref: string, opts: { force?: boolean; volumes?: boolean } = {}): Promise<void> {
    const id = await this.resolve(ref);
    const o = await observe(this, id);
    if ((o.status === 'running' || o.status === 'paused' || o.status === 'restarting') && !opts.force) {
      throw new control.StateError(`cannot remove container ${id.slice(0, 12)}: it is ${o.status}; stop it first or use rm -f`);
    }
    // Kills a live one; for one that exited, waits until its supervisor has finished tearing down.
    await control.stop(this, id, 0);
    const rec = await readRecord(this.paths, id).catch(() => undefined);
    if (rec) await removeContainerFiles(this.paths, this.runc(), rec, { volumes: opts.volumes ?? false });
  }

  async inspect(ref: string): Promise<Record<string, unknown>> {
    return inspectDocument(await observe(this, await this.resolve(ref)), this.paths);
  }

  async ps(opts: { all?: boolean } = {}): Promise<ContainerSummary[]> {
    const out: ContainerSummary[] = [];
    for (const id of (await listIds(this.paths)).reverse()) {
      const o = await observe(this, id).catch(() => undefined);
      if (o && (opts.all || o.status === 'running' || o.status === 'paused' || o.status === 'restarting')) out.push(summary(o));
    }
    return out;
  }

  async logs(ref: string, sink: LogSink, opts: { follow?: boolean; tail?: number; timestamps?: boolean } = {}): Promise<void> {
    const id = await this.resolve(ref);
    const rec = await readRecord(this.paths, id);
    const done = async () => {
      const o = await observe(this, id).catch(() => undefined);
      return !o || !o.supervised;
    };
    await writeLogs(this.paths.container(id).log, sink, { ...opts, done, maxFiles: Number(rec.HostConfig.LogConfig.Config['max-file']) });
  }

  /** Waits (bounded) until the container is over and returns its exit code. */
  async wait(ref: string, timeoutMs = 60_000): Promise<number> {
    const id = await this.resolve(ref);
    const o = await control.waitUntilStopped(this, id, timeoutMs);
    if (!o) throw new control.StateError(`container ${id.slice(0, 12)} was removed before its exit code could be read`);
    if (o.supervised || o.status === 'running' || o.status === 'paused' || o.status === 'restarting') throw new control.StateError(`container ${id.slice(0, 12)} still runs after ${timeoutMs} ms`);
    return o.state.ExitCode;
  }

  /** Ids of the images containers on this node were made from (the image store keeps them). */
  async imagesInUse(): Promise<Set<string>> {
    const ids = await listIds(this.paths);
    const recs = await Promise.all(ids.map((id) => readRecord(this.paths, id).catch(() => undefined)));
    return new Set(recs.flatMap((r) => (r ? [r.Image] : [])));
  }
}

/** The image config with the user's command and flags laid over it, as docker merges them. */
export function containerConfig(id: string, ref: string, image: LocalImage, cmd: string[], o: ConfigOverrides, published: PortMapping[]): ContainerConfig {
  const ic = image.config;
  const entrypoint = o.Entrypoint ?? ic.Entrypoint ?? [];
  return {
    Hostname: o.Hostname ?? id.slice(0, 12),
    User: o.User ?? ic.User ?? '',
    Env: mergeEnv(ic.Env ?? [], o.Env),
    // A new entrypoint drops the image's CMD, as in docker.
    Cmd: cmd.length ? cmd : o.Entrypoint !== undefined ? [] : (ic.Cmd ?? []),
    Entrypoint: entrypoint,
    Image: ref,
    WorkingDir: o.WorkingDir ?? ic.WorkingDir ?? '',
    Labels: { ...(ic.Labels ?? {}), ...o.Labels },
    ExposedPorts: { ...(ic.ExposedPorts ?? {}), ...Object.fromEntries(published.map((p) => [`${p.containerPort}/${p.protocol}`, {}])) },
    Healthcheck: mergeHealth(ic.Healthcheck, o.Healthcheck),
    StopSignal: o.StopSignal ?? (ic.StopSignal ? signalName(ic.StopSignal) : 'SIGTERM'),
    StopTimeout: o.StopTimeout ?? 10,
    Tty: o.Tty,
    OpenStdin: o.OpenStdin,
  };
}
