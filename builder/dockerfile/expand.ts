/*
 * Variable expansion as BuildKit's shell lexer does it for the instructions that expand
 * (ADD, ARG, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR; RUN, CMD and
 * ENTRYPOINT are left to the shell): `$V`, `${V}`, `${V:-word}`, `${V-word}`, `${V:+word}`,
 * `${V+word}`, `${V:?message}`, `${V?message}`; single quotes are literal, double quotes
 * expand; the escape character (`\` or a backtick) makes the next character literal (inside
 * double quotes only before `"`, `$` and itself). Quotes are removed from the result.
 */

/** A variable's value, or undefined when it is not set. */
export type Lookup = (name: string) => string | undefined;

export class ExpansionError extends Error {}

const NAME_CHAR = /[A-Za-z0-9_]/;

export function lookupIn(...sources: (ReadonlyMap<string, string> | Record<string, string | undefined>)[]): Lookup {
  return (name) => {
    for (const s of sources) {
      const v = s instanceof Map ? s.get(name) : (s as Record<string, string | undefined>)[name];
      if (v !== undefined) return v;
    }
    return undefined;
  };
}

/** Expands one word and removes its quotes. */
export function processWord(word: string, lookup: Lookup, escape = '\\'): string {
  return new WordLexer(word, lookup, escape).word(() => false);
}

/** Splits on unquoted, unescaped blanks (quotes kept), then expands each word. */
export function processWords(text: string, lookup: Lookup, escape = '\\'): string[] {
  return splitWords(text, escape).map((w) => processWord(w, lookup, escape));
}

/** Words separated by unquoted, unescaped blanks; quotes and escapes are kept. */
export function splitWords(text: string, escape = '\\'): string[] {
  const words: string[] = [];
  let word = '';
  let quote = '';
  let inWord = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (!quote && /\s/.test(c)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
      continue;
    }
    inWord = true;
    word += c;
    if (c === escape && quote !== "'" && i + 1 < text.length) word += text[++i];
    else if (quote && c === quote) quote = '';
    else if (!quote && (c === '"' || c === "'")) quote = c;
  }
  if (inWord) words.push(word);
  return words;
}

class WordLexer {
  private i = 0;

  constructor(
    private readonly s: string,
    private readonly lookup: Lookup,
    private readonly escape: string,
  ) {}

  /** Reads until the end or until `stop` says so at an unquoted position. */
  word(stop: (c: string) => boolean): string {
    let out = '';
    while (this.i < this.s.length) {
      const c = this.s[this.i]!;
      if (stop(c)) break;
      this.i++;
      if (c === "'") out += this.single();
      else if (c === '"') out += this.double();
      else if (c === '$') out += this.variable();
      else if (c === this.escape) out += this.i < this.s.length ? this.s[this.i++] : '';
      else out += c;
    }
    return out;
  }

  private single(): string {
    const end = this.s.indexOf("'", this.i);
    if (end < 0) throw new ExpansionError('unexpected end of statement while looking for matching single-quote');
    const text = this.s.slice(this.i, end);
    this.i = end + 1;
    return text;
  }

  private double(): string {
    let out = '';
    while (this.i < this.s.length) {
      const c = this.s[this.i++]!;
      if (c === '"') return out;
      if (c === '$') out += this.variable();
      else if (c === this.escape && this.i < this.s.length) {
        const n = this.s[this.i++]!;
        out += n === '"' || n === '$' || n === this.escape ? n : c + n;
      } else out += c;
    }
    throw new ExpansionError('unexpected end of statement while looking for matching double-quote');
  }

  private variable(): string {
    const c = this.s[this.i];
    if (c === '{') {
      this.i++;
      return this.braced();
    }
    const name = this.name();
    if (name === '') return '$';
    return this.lookup(name) ?? '';
  }

  private name(): string {
    let name = '';
    while (this.i < this.s.length && NAME_CHAR.test(this.s[this.i]!)) name += this.s[this.i++];
    return name;
  }

  /** After `${`: NAME then `}` or a modifier and its word. */
  private braced(): string {
    const name = this.name();
    if (name === '') throw new ExpansionError(`bad substitution: \${${this.s.slice(this.i, this.i + 10)}`);
    let op = this.s[this.i];
    if (op === '}') {
      this.i++;
      return this.lookup(name) ?? '';
    }
    if (op === undefined) throw new ExpansionError(`missing "}" after \${${name}`);
    let colon = false;
    if (op === ':') {
      colon = true;
      op = this.s[++this.i];
    }
    if (op === undefined || !'-+?'.includes(op)) throw new ExpansionError(`unsupported modifier (${colon ? ':' : ''}${op ?? ''}) in substitution \${${name}…}`);
    this.i++;
    const word = this.word((ch) => ch === '}');
    if (this.s[this.i] !== '}') throw new ExpansionError(`missing "}" after \${${name}${colon ? ':' : ''}${op}`);
    this.i++;
    const value = this.lookup(name);
    const set = colon ? value !== undefined && value !== '' : value !== undefined;
    if (op === '-') return set ? value! : word;
    if (op === '+') return set ? word : '';
    if (!set) throw new ExpansionError(`${name}: ${word || 'is not allowed to be unset'}`);
    return value!;
  }
}
