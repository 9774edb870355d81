/*
 * A parsed node + the build's variables → a typed operation, with the arguments checked and
 * expanded (for the instructions that expand). Every problem names the Dockerfile line.
 * FROM is read in stages.ts, where the global ARGs are known.
 */
import { DockerfileError } from './errors.js';
import { argDecl, exposedPorts, flagValue, flagValues, healthcheck, keyValues, type ExpandContext, type HealthcheckOp } from './arguments.js';
import { ExpansionError, processWord, processWords, splitWords } from './expand.js';
import type { Node } from './parse.js';
import { parseMount, type MountSpec } from './mounts.js';

export interface InlineFile {
  name: string;
  content: string;
}

export type Op =
  | { kind: 'RUN'; argv: string[]; shellForm: boolean; script?: { name: string; content: string }; mounts: MountSpec[]; network?: 'none' | 'host' }
  | { kind: 'COPY' | 'ADD'; sources: string[]; inline: InlineFile[]; dest: string; from?: string; chown?: string; chmod?: number; exclude: string[]; checksum?: string }
  | { kind: 'ENV' | 'LABEL'; pairs: [string, string][] }
  | { kind: 'ARG'; args: { name: string; default?: string }[] }
  | { kind: 'EXPOSE'; ports: string[] }
  | { kind: 'WORKDIR' | 'USER' | 'STOPSIGNAL' | 'MAINTAINER'; value: string }
  | { kind: 'VOLUME'; paths: string[] }
  | { kind: 'CMD' | 'ENTRYPOINT' | 'SHELL'; argv: string[] }
  | { kind: 'HEALTHCHECK'; health: HealthcheckOp }
  | { kind: 'ONBUILD'; trigger: string };

export interface EvalContext extends ExpandContext {
  file: string;
  /** The SHELL in effect (shell forms of RUN, CMD, ENTRYPOINT). */
  shell: string[];
}

const FLAGS: Record<string, string[]> = {
  RUN: ['mount', 'network', 'security'],
  COPY: ['from', 'chown', 'chmod', 'link', 'exclude'],
  ADD: ['chown', 'chmod', 'link', 'exclude', 'checksum'],
  HEALTHCHECK: ['interval', 'timeout', 'start-period', 'start-interval', 'retries'],
};
const HEREDOC_WORD = /^<<-?(["']?)([A-Za-z_][A-Za-z0-9_.-]*)\1$/;

export function evaluate(node: Node, ctx: EvalContext): Op {
  const fail = (reason: string): never => {
    throw new DockerfileError(ctx.file, node.line, reason);
  };
  const allowed = FLAGS[node.keyword] ?? [];
  for (const f of node.flags) if (!allowed.includes(f.name)) fail(`unknown flag --${f.name} for ${node.keyword}`);
  try {
    return evaluateChecked(node, ctx, fail);
  } catch (err) {
    if (err instanceof ExpansionError) fail(`${node.keyword}: ${err.message}`);
    throw err;
  }
}

function evaluateChecked(node: Node, ctx: EvalContext, fail: (reason: string) => never): Op {
  const word = (s: string) => processWord(s, ctx.lookup, ctx.escape);
  const words = (s: string) => processWords(s, ctx.lookup, ctx.escape);
  const needArgs = () => node.args === '' && fail(`${node.keyword} requires at least one argument`);
  switch (node.keyword) {
    case 'RUN':
      needArgs();
      return runOp(node, ctx, fail);
    case 'COPY':
    case 'ADD':
      return copyOp(node, ctx, fail);
    case 'ENV':
    case 'LABEL':
      needArgs();
      return { kind: node.keyword, pairs: keyValues(node, ctx, fail) };
    case 'ARG':
      needArgs();
      return { kind: 'ARG', args: splitWords(node.args, ctx.escape).map((w) => argDecl(w, word, fail)) };
    case 'EXPOSE':
      needArgs();
      return { kind: 'EXPOSE', ports: words(node.args).flatMap((p) => exposedPorts(p, fail)) };
    case 'WORKDIR':
    case 'USER':
    case 'MAINTAINER':
    case 'STOPSIGNAL': {
      needArgs();
      const value = node.keyword === 'MAINTAINER' ? node.args : word(node.args);
      if (value === '') fail(`${node.keyword} cannot be empty`);
      if (node.keyword === 'STOPSIGNAL' && !/^(SIG)?[A-Z0-9]+$|^\d+$/i.test(value)) fail(`STOPSIGNAL: invalid signal "${value}"`);
      return { kind: node.keyword, value };
    }
    case 'VOLUME': {
      needArgs();
      const paths = node.json ? node.json.map(word) : words(node.args);
      if (paths.length === 0 || paths.some((p) => p.trim() === '')) fail('VOLUME specified can not be an empty string');
      return { kind: 'VOLUME', paths };
    }
    case 'CMD':
    case 'ENTRYPOINT':
      return { kind: node.keyword, argv: node.json ?? (node.args === '' ? [] : [...ctx.shell, node.args]) };
    case 'SHELL':
      if (!node.json || node.json.length === 0) fail('SHELL requires the arguments to be in JSON form, e.g. SHELL ["/bin/sh", "-c"]');
      return { kind: 'SHELL', argv: node.json! };
    case 'HEALTHCHECK':
      return { kind: 'HEALTHCHECK', health: healthcheck(node, fail) };
    case 'ONBUILD': {
      const trigger = node.args.trim();
      const kw = trigger.split(/\s/, 1)[0]!.toUpperCase();
      if (trigger === '') fail('ONBUILD requires an instruction');
      if (kw === 'ONBUILD' || kw === 'FROM' || kw === 'MAINTAINER') fail(`${kw} isn't allowed as an ONBUILD trigger`);
      return { kind: 'ONBUILD', trigger };
    }
    default:
      return fail(`${node.keyword} is not allowed here`);
  }
}

function runOp(node: Node, ctx: EvalContext, fail: (reason: string) => never): Op {
  const mounts = flagValues(node.flags, 'mount').map((spec) => {
    try {
      return parseMount(spec);
    } catch (err) {
      return fail(`RUN --mount=${spec}: ${(err as Error).message}`);
    }
  });
  const net = flagValue(node.flags, 'network');
  if (net !== undefined && !['none', 'host', 'default'].includes(net)) fail(`RUN --network=${net}: expected none, host or default`);
  const security = flagValue(node.flags, 'security');
  if (security !== undefined && security !== 'sandbox') fail(`RUN --security=${security} is not supported: builds run sandboxed`);
  const network: 'none' | 'host' | undefined = net === 'none' || net === 'host' ? net : undefined;
  const base = { kind: 'RUN' as const, mounts, ...(network ? { network } : {}) };
  if (node.json) return { ...base, argv: node.json, shellForm: false };
  const only = HEREDOC_WORD.exec(node.args);
  const first = node.heredocs[0];
  if (only && first && node.heredocs.length === 1) {
    // A script body: run by the shell, or, with a #! line, as a file of its own.
    if (!first.content.startsWith('#!')) return { ...base, argv: [...ctx.shell, first.content], shellForm: true };
    return { ...base, argv: [], shellForm: true, script: { name: first.name, content: first.content } };
  }
  const text = node.heredocs.length ? [node.args, ...node.heredocs.map((h) => `${h.content}${h.name}`)].join('\n') : node.args;
  return { ...base, argv: [...ctx.shell, text], shellForm: true };
}

function copyOp(node: Node, ctx: EvalContext, fail: (reason: string) => never): Op {
  const kind = node.keyword as 'COPY' | 'ADD';
  const word = (s: string) => processWord(s, ctx.lookup, ctx.escape);
  const raw = node.json ?? splitWords(node.args, ctx.escape);
  if (raw.length < 2) fail(`${kind} requires at least two arguments, but only ${raw.length} ${raw.length === 1 ? 'was' : 'were'} provided: the sources and a destination`);
  const inline: InlineFile[] = [];
  const sources: string[] = [];
  for (const w of raw.slice(0, -1)) {
    const m = node.json ? null : HEREDOC_WORD.exec(w);
    const doc = m ? node.heredocs.find((h) => h.name === m[2]) : undefined;
    if (doc) inline.push({ name: doc.name, content: doc.expand ? expandHeredoc(doc.content, ctx) : doc.content });
    else sources.push(word(w));
  }
  const dest = word(raw.at(-1)!);
  if (dest === '') fail(`${kind}: the destination is empty`);
  const chmodText = flagValue(node.flags, 'chmod');
  let chmod: number | undefined;
  if (chmodText !== undefined) {
    const m = /^[0-7]{3,4}$/.exec(word(chmodText));
    if (!m) fail(`${kind} --chmod=${chmodText}: expected an octal mode such as 755 or 0644`);
    chmod = parseInt(m![0], 8);
  }
  const from = flagValue(node.flags, 'from');
  const chown = flagValue(node.flags, 'chown');
  const checksum = flagValue(node.flags, 'checksum');
  if (checksum !== undefined && !/^sha256:[a-f0-9]{64}$/.test(checksum)) fail(`ADD --checksum=${checksum}: expected sha256:<64 hex>`);
  return {
    kind,
    sources,
    inline,
    dest,
    exclude: flagValues(node.flags, 'exclude').map(word),
    ...(from !== undefined ? { from: word(from) } : {}),
    ...(chown !== undefined ? { chown: word(chown) } : {}),
    ...(chmod !== undefined ? { chmod } : {}),
    ...(checksum !== undefined ? { checksum } : {}),
  };
}

/** A heredoc body for COPY/ADD: variables expand, quotes stay as written. */
function expandHeredoc(content: string, ctx: EvalContext): string {
  return content.replace(/\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)/g, (m) => processWord(m, ctx.lookup, ctx.escape));
}

export { flagValue, flagValues, parseDuration, type ExpandContext, type HealthcheckOp } from './arguments.js';
