/*
 * Stages: the global ARGs before the first FROM, then one stage per FROM. FROM expands with
 * the global ARGs only; `AS name` names the stage (case-insensitive); --target picks the
 * stage to build (default: the last one).
 */
import { DockerfileError } from './errors.js';
import { ExpansionError, lookupIn, processWord, splitWords } from './expand.js';
import { evaluate } from './instructions.js';
import type { Node, ParsedDockerfile } from './parse.js';

export interface StageDef {
  index: number;
  from: Node;
  nodes: Node[];
  /** Step number (1-based, across the file) of the FROM. */
  firstStep: number;
}

export interface Stages {
  file: string;
  escape: string;
  globalArgs: Node[];
  stages: StageDef[];
}

export interface FromSpec {
  /** `scratch`, an earlier stage's name, or an image reference. */
  image: string;
  name?: string;
  platform?: string;
}

/** BuildKit's automatic platform ARGs (this builder makes linux/amd64 images). */
export const PLATFORM_ARGS: Record<string, string> = {
  TARGETPLATFORM: 'linux/amd64',
  TARGETOS: 'linux',
  TARGETARCH: 'amd64',
  TARGETVARIANT: '',
  BUILDPLATFORM: 'linux/amd64',
  BUILDOS: 'linux',
  BUILDARCH: 'amd64',
  BUILDVARIANT: '',
};

/** Build args usable in RUN without an ARG line, and kept out of the history. */
export const PROXY_ARGS = ['HTTP_PROXY', 'http_proxy', 'HTTPS_PROXY', 'https_proxy', 'FTP_PROXY', 'ftp_proxy', 'NO_PROXY', 'no_proxy', 'ALL_PROXY', 'all_proxy'];

export function splitStages(parsed: ParsedDockerfile, file: string): Stages {
  const out: Stages = { file, escape: parsed.escape, globalArgs: [], stages: [] };
  let step = 0;
  for (const node of parsed.nodes) {
    step++;
    if (node.keyword === 'FROM') {
      out.stages.push({ index: out.stages.length, from: node, nodes: [], firstStep: step });
      continue;
    }
    const current = out.stages.at(-1);
    if (current) current.nodes.push(node);
    else if (node.keyword === 'ARG') out.globalArgs.push(node);
    else throw new DockerfileError(file, node.line, `${node.keyword} before the first FROM: a Dockerfile must begin with FROM (only ARG may come before it)`);
  }
  if (out.stages.length === 0) throw new DockerfileError(file, parsed.nodes.at(-1)?.endLine ?? 1, 'the Dockerfile has no FROM instruction');
  return out;
}

/** Values of the global ARGs: --build-arg wins over the default. */
export function globalArgValues(s: Stages, buildArgs: Record<string, string>): Map<string, string> {
  const values = new Map<string, string>(Object.entries(PLATFORM_ARGS));
  for (const node of s.globalArgs) {
    const op = evaluate(node, { file: s.file, escape: s.escape, lookup: lookupIn(values), shell: [] });
    if (op.kind !== 'ARG') continue;
    for (const a of op.args) {
      const v = buildArgs[a.name] ?? a.default;
      if (v !== undefined) values.set(a.name, v);
    }
  }
  return values;
}

export function parseFrom(node: Node, s: Stages, globals: Map<string, string>): FromSpec {
  const fail = (reason: string): never => {
    throw new DockerfileError(s.file, node.line, reason);
  };
  for (const f of node.flags) if (f.name !== 'platform') fail(`unknown flag --${f.name} for FROM`);
  const word = (w: string) => {
    try {
      return processWord(w, lookupIn(globals), s.escape);
    } catch (err) {
      if (err instanceof ExpansionError) return fail(`FROM: ${err.message}`);
      throw err;
    }
  };
  const words = splitWords(node.args, s.escape);
  if (words.length !== 1 && !(words.length === 3 && words[1]!.toUpperCase() === 'AS')) fail('FROM requires an image, optionally followed by AS <name>: FROM <image> [AS <name>]');
  const image = word(words[0]!);
  if (image === '') fail(`FROM: the image name is empty (is ${words[0]} a build argument without a value?)`);
  const spec: FromSpec = { image };
  if (words.length === 3) {
    const name = words[2]!.toLowerCase();
    if (!/^[a-z][a-z0-9._-]*$/.test(name)) fail(`FROM ... AS ${words[2]}: invalid stage name; use letters, digits, ".", "_" and "-", starting with a letter`);
    spec.name = name;
  }
  const platform = node.flags.find((f) => f.name === 'platform')?.value;
  if (platform !== undefined) {
    const p = word(platform);
    if (p !== 'linux/amd64' && p !== 'linux/x86_64') fail(`FROM --platform=${p}: this builder makes linux/amd64 images only`);
    spec.platform = 'linux/amd64';
  }
  return spec;
}

/** The stage `target` names (by name or index), or the last stage. */
export function targetStage(s: Stages, names: (string | undefined)[], target: string | undefined): StageDef {
  if (target === undefined || target === '') return s.stages.at(-1)!;
  const i = names.findIndex((n) => n === target.toLowerCase());
  if (i < 0) {
    const known = names.filter(Boolean);
    throw new DockerfileError(s.file, s.stages.at(-1)!.from.line, `target stage "${target}" could not be found${known.length ? `; the stages are: ${known.join(', ')}` : ' (no stage has a name: use FROM … AS <name>)'}`);
  }
  return s.stages[i]!;
}
