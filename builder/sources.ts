/*
 * The worker's side of a build's context: fetch an uploaded context back from
 * the registry process's API and extract it, or clone the exact commit a git
 * push named (a shallow fetch of that sha; servers that refuse an unadvertised
 * sha get a fetch of the branch instead, in which the commit must be found).
 * Failures say whether a retry could help: an unreachable server is
 * infrastructure, a commit that does not exist is the user's.
 */
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadable } from 'node:stream/web';
import { extractContext } from './build-context.js';
import { redactUrl, redactUrls, splitCredentials } from './redact.js';
import type { BuildSource } from './records.js';
import { BuildError, type BuildLogger } from './types.js';

export interface SourceOptions {
  /** The build's capability token: the registry's API gives the context only with it. */
  token?: string;
  /** Credentials for a git source, kept apart from its URL (sent as a build secret). */
  gitCredentials?: { username: string; password: string };
}

/** Fills `dir` with the build's context; logs what it did. */
export async function prepareSource(source: BuildSource, dir: string, log: BuildLogger, signal: AbortSignal, opts: SourceOptions = {}): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  if (source.type === 'upload') await fetchUpload(source.url, dir, log, signal, opts.token);
  else await cloneCommit(source, dir, log, signal, opts.gitCredentials);
}

async function fetchUpload(url: string, dir: string, log: BuildLogger, signal: AbortSignal, token?: string): Promise<void> {
  let res: Response;
  try {
    res = await fetch(url, { signal, headers: token ? { Authorization: `Bearer ${token}` } : {} });
  } catch (err) {
    throw new BuildError(`cannot fetch the build context from ${url}: ${causeOf(err)}`, 'infrastructure');
  }
  if (res.status === 404) throw new BuildError(`the build context is no longer stored at ${url}`, 'user');
  if (!res.ok || !res.body) throw new BuildError(`fetching the build context from ${url} answered ${res.status}`, 'infrastructure');
  const stats = await extractContext(Readable.fromWeb(res.body as WebReadable<Uint8Array>), dir).catch((err: unknown) => {
    if (err instanceof BuildError) throw err;
    // A transfer that breaks is the infrastructure's; bytes that are not a tar are what
    // the client sent, and no retry changes them.
    if (err instanceof Error && NOT_A_TAR.test(err.message)) {
      throw new BuildError(`the build context is not a tar archive (${causeOf(err)}): send a directory with slipway build, or a tar stream`, 'user');
    }
    throw new BuildError(`receiving the build context failed: ${causeOf(err)}`, 'infrastructure');
  });
  log.line(`context: ${stats.files} files, ${formatBytes(stats.bytes)}`);
}

/** tar-stream's complaints about its input (a transfer cut short fails with the socket's error instead). */
const NOT_A_TAR = /^(Invalid tar header|Invalid header|Header exceeds max size|Unexpected end of data)/;

/** Only these transports; `ext::` and friends run commands. */
const GIT_URL = /^(https?|git|ssh|file):\/\/[^\s]+$|^[\w.-]+@[\w.-]+:[^\s]+$/;
const SHA = /^[0-9a-f]{40}([0-9a-f]{24})?$/;

type GitCredentials = NonNullable<SourceOptions['gitCredentials']>;

/*
 * Credentials for an http(s) clone never go on a command line (`ps` shows it to
 * every user) nor into .git/config: git asks a credential helper, given as
 * configuration in the environment (GIT_CONFIG_COUNT…), scoped to the clone
 * URL's origin so a redirect to another host gets nothing, that prints them from
 * two variables of git's own environment. Helpers configured on the worker
 * (`store` would write them to ~/.git-credentials) are reset first.
 */
function credentialEnv(url: string, c: GitCredentials | undefined): NodeJS.ProcessEnv {
  if (!c) return {};
  const origin = new URL(url).origin;
  const helper = '!f() { test "$1" = get && printf "username=%s\\npassword=%s\\n" "$SLIPWAY_GIT_USERNAME" "$SLIPWAY_GIT_PASSWORD"; }; f';
  return {
    GIT_CONFIG_COUNT: '2',
    GIT_CONFIG_KEY_0: 'credential.helper',
    GIT_CONFIG_VALUE_0: '',
    GIT_CONFIG_KEY_1: `credential.${origin}.helper`,
    GIT_CONFIG_VALUE_1: helper,
    SLIPWAY_GIT_USERNAME: c.username,
    SLIPWAY_GIT_PASSWORD: c.password,
  };
}

async function cloneCommit(src: Extract<BuildSource, { type: 'git' }>, dir: string, log: BuildLogger, signal: AbortSignal, credentials?: GitCredentials): Promise<void> {
  // A URL that still carries userinfo has it taken off here, and used like credentials given apart.
  const split = /^https?:\/\//i.test(src.url) ? splitCredentials(src.url) : { url: src.url };
  const url = split.url;
  const shown = redactUrl(src.url);
  if (!GIT_URL.test(url)) throw new BuildError(`not a git URL this builder clones from: ${shown}`, 'user');
  if (!SHA.test(src.sha)) throw new BuildError(`not a commit id: ${src.sha}`, 'user');
  const env = credentialEnv(url, credentials ?? split.credentials);
  const git = (args: string[]) => runGit(args, signal, env);
  log.line(`git: fetching ${src.sha.slice(0, 12)} (${src.ref}) from ${shown}`);
  await git(['init', '-q', dir]);
  await git(['-C', dir, 'remote', 'add', 'origin', url]);
  const bySha = await git(['-C', dir, 'fetch', '-q', '--depth', '1', '--no-tags', 'origin', src.sha]).then(
    () => null,
    (err: Error) => err,
  );
  if (bySha) {
    if (unreachable(bySha.message)) throw new BuildError(`cannot reach git repository ${shown}: ${bySha.message}`, 'infrastructure');
    const branch = src.ref.replace(/^refs\/heads\//, '');
    await git(['-C', dir, 'fetch', '-q', '--no-tags', 'origin', `+refs/heads/${branch}:refs/remotes/origin/${branch}`]).catch((err: Error) => {
      throw new BuildError(`cannot fetch branch ${branch} of ${shown}: ${err.message}`, unreachable(err.message) ? 'infrastructure' : 'user');
    });
    const found = await git(['-C', dir, 'cat-file', '-e', `${src.sha}^{commit}`]).then(
      () => true,
      () => false,
    );
    if (!found) {
      throw new BuildError(`commit ${src.sha} does not exist in ${shown} (not fetchable by id, and not on branch ${branch})`, 'user');
    }
  }
  await git(['-C', dir, '-c', 'advice.detachedHead=false', 'checkout', '-q', src.sha]).catch((err: Error) => {
    throw new BuildError(`cannot check out ${src.sha} of ${shown}: ${err.message}`, 'user');
  });
  // Like docker's git contexts: the build sees the tree, not the repository.
  await rm(join(dir, '.git'), { recursive: true, force: true });
  log.line(`git: checked out ${src.sha}`);
}

function unreachable(message: string): boolean {
  return /unable to connect|Connection refused|Could not resolve host|timed out|Could not read from remote|unable to access/i.test(message) &&
    !/not our ref|couldn't find remote ref|no such remote ref|upload-pack: not our ref/i.test(message);
}

/** git, failing with its stderr, any URL's credentials in it redacted. */
function runGit(args: string[], signal: AbortSignal, env: NodeJS.ProcessEnv): Promise<string> {
  return new Promise((ok, fail) => {
    execFile(
      'git',
      ['-c', 'protocol.ext.allow=never', '-c', 'core.hooksPath=/dev/null', ...args],
      { signal, env: { ...process.env, GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: 'true', ...env }, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) {
          const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
          fail(new Error(missing ? 'git is not installed on this worker (apt-get install git)' : redactUrls(stderr.trim() || err.message)));
        } else ok(stdout);
      },
    );
  });
}

function causeOf(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as Error & { cause?: unknown }).cause;
  return cause instanceof Error ? `${err.message}: ${cause.message}` : err.message;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}
