/*
 * Dockerfile syntax → instruction nodes, as BuildKit's parser reads it:
 *   - parser directives (`# escape=` and `# syntax=`, case-insensitive) only at the very top,
 *     before any comment, blank line or instruction; `syntax` is accepted and ignored;
 *   - comment lines (first non-blank character `#`) and blank lines vanish, also inside a
 *     continuation; a line whose last non-blank character is the escape character continues;
 *   - `<<EOF`, `<<-EOF` (leading tabs stripped), `<<"EOF"`/`<<'EOF'` (no expansion) heredocs
 *     after RUN, COPY and ADD: their bodies are the lines that follow, up to the delimiter;
 *   - leading `--flag[=value]` words, and the JSON (exec) form of the arguments.
 * Nothing is expanded here; instructions.ts does that with the build's variables.
 */
import { DockerfileError } from './errors.js';

export interface Heredoc {
  name: string;
  /** The body, every line ending in "\n". */
  content: string;
  /** False when the delimiter was quoted: the body is taken literally. */
  expand: boolean;
  /** `<<-`: leading tabs were stripped from each line. */
  chomp: boolean;
}

export interface Flag {
  name: string;
  /** Undefined for a bare `--flag`. */
  value?: string;
}

export interface Node {
  /** Upper case: `RUN`, `COPY`, … */
  keyword: string;
  /** First and last line of the instruction (heredoc bodies included), 1-based. */
  line: number;
  endLine: number;
  /** The instruction as written, continuations joined (heredoc bodies not included). */
  original: string;
  flags: Flag[];
  /** The arguments after the flags, trimmed. */
  args: string;
  /** Set when the arguments are a JSON array of strings (the exec form). */
  json?: string[];
  heredocs: Heredoc[];
}

export interface ParsedDockerfile {
  /** The escape character: `\` or, with `# escape=\``, a backtick. */
  escape: string;
  syntax?: string;
  nodes: Node[];
  warnings: string[];
}

export const KEYWORDS = [
  'ADD', 'ARG', 'CMD', 'COPY', 'ENTRYPOINT', 'ENV', 'EXPOSE', 'FROM', 'HEALTHCHECK', 'LABEL',
  'MAINTAINER', 'ONBUILD', 'RUN', 'SHELL', 'STOPSIGNAL', 'USER', 'VOLUME', 'WORKDIR',
] as const;
const HEREDOC_KEYWORDS = new Set(['RUN', 'COPY', 'ADD']);
const DIRECTIVE = /^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$/;
const KNOWN_DIRECTIVES = new Set(['escape', 'syntax', 'check']);
const HEREDOC = /(^|[\s\d])<<(-?)(["']?)([A-Za-z_][A-Za-z0-9_.-]*)\3/g;

export function parseDockerfile(text: string, file = 'Dockerfile'): ParsedDockerfile {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  if (lines.at(-1) === '') lines.pop();
  const out: ParsedDockerfile = { escape: '\\', nodes: [], warnings: [] };
  let i = readDirectives(lines, out, file);
  const continues = continuationTest(out.escape);
  while (i < lines.length) {
    const raw = lines[i]!;
    if (isBlankOrComment(raw)) {
      i++;
      continue;
    }
    const start = i;
    let joined = '';
    let line = raw;
    for (;;) {
      const m = continues(line);
      if (!m) {
        joined += line;
        i++;
        break;
      }
      joined += m;
      i++;
      while (i < lines.length && isBlankOrComment(lines[i]!)) {
        if (lines[i]!.trim() === '') out.warnings.push(`${file}:${i + 1}: empty continuation line`);
        i++;
      }
      if (i >= lines.length) break;
      line = lines[i]!;
    }
    const node = makeNode(joined.trim(), start + 1, i, file);
    if (HEREDOC_KEYWORDS.has(node.keyword)) i = readHeredocs(node, lines, i, file);
    out.nodes.push(node);
  }
  return out;
}

function readDirectives(lines: string[], out: ParsedDockerfile, file: string): number {
  const seen = new Set<string>();
  let i = 0;
  for (; i < lines.length; i++) {
    const m = DIRECTIVE.exec(lines[i]!);
    if (!m) break;
    const name = m[1]!.toLowerCase();
    if (!KNOWN_DIRECTIVES.has(name)) break;
    if (seen.has(name)) throw new DockerfileError(file, i + 1, `only one "${name}" parser directive can be used`);
    seen.add(name);
    const value = m[2]!;
    if (name === 'escape') {
      if (value !== '\\' && value !== '`') throw new DockerfileError(file, i + 1, `invalid escape token "${value}": it must be \` or \\`);
      out.escape = value;
    } else if (name === 'syntax') out.syntax = value;
  }
  return i;
}

const isBlankOrComment = (line: string): boolean => {
  const t = line.trimStart();
  return t === '' || t.startsWith('#');
};

/** The line without its trailing escape (and blanks after it) when it continues, else null. */
function continuationTest(escape: string): (line: string) => string | null {
  const re = new RegExp(`\\${escape}[ \\t]*$`);
  return (line) => {
    const m = re.exec(line);
    return m ? line.slice(0, m.index) : null;
  };
}

function makeNode(text: string, line: number, endLine: number, file: string): Node {
  const m = /^(\S+)\s*([\s\S]*)$/.exec(text)!;
  const word = m[1]!;
  const keyword = word.toUpperCase();
  if (!(KEYWORDS as readonly string[]).includes(keyword)) {
    const hint = suggest(keyword);
    throw new DockerfileError(file, line, `unknown instruction "${word}"${hint ? ` (did you mean ${hint}?)` : ''}`);
  }
  const { flags, rest } = splitFlags(m[2]!, keyword === 'ONBUILD' ? false : true);
  const node: Node = { keyword, line, endLine, original: text, flags, args: rest.trim(), heredocs: [] };
  const json = parseJsonArray(node.args);
  if (json) node.json = json;
  return node;
}

/** Leading `--name[=value]` words; values may be quoted. */
export function splitFlags(text: string, enabled = true): { flags: Flag[]; rest: string } {
  const flags: Flag[] = [];
  let rest = text.trimStart();
  while (enabled && rest.startsWith('--')) {
    let j = 2;
    let quote = '';
    let word = '';
    for (; j < rest.length; j++) {
      const c = rest[j]!;
      if (quote) {
        if (c === quote) quote = '';
        else word += c;
      } else if (c === '"' || c === "'") quote = c;
      else if (/\s/.test(c)) break;
      else word += c;
    }
    if (word === '') break; // `--` alone is not a flag
    const eq = word.indexOf('=');
    flags.push(eq < 0 ? { name: word } : { name: word.slice(0, eq), value: word.slice(eq + 1) });
    rest = rest.slice(j).trimStart();
  }
  return { flags, rest };
}

function parseJsonArray(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  try {
    const v: unknown = JSON.parse(args);
    return Array.isArray(v) && v.every((s) => typeof s === 'string') ? (v as string[]) : undefined;
  } catch {
    return undefined;
  }
}

function readHeredocs(node: Node, lines: string[], next: number, file: string): number {
  if (node.json) return next;
  let i = next;
  for (const m of node.args.matchAll(HEREDOC)) {
    const chomp = m[2] === '-';
    const name = m[4]!;
    let content = '';
    for (;;) {
      if (i >= lines.length) throw new DockerfileError(file, node.line, `unterminated heredoc: no line "${name}" ends the <<${name} body`);
      const raw = lines[i++]!;
      const body = chomp ? raw.replace(/^\t+/, '') : raw;
      if (body === name) break;
      content += `${body}\n`;
    }
    node.heredocs.push({ name, content, expand: m[3] === '', chomp });
  }
  node.endLine = i;
  return i;
}

/** The keyword one or two edits away, if any. */
function suggest(word: string): string | undefined {
  let best: [string, number] | undefined;
  for (const k of KEYWORDS) {
    const d = distance(word, k);
    if (d <= 2 && (!best || d < best[1])) best = [k, d];
  }
  return best?.[0];
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}
