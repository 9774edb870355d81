/** Go's filepath.Match, which COPY/ADD sources use: `*`, `?`, `[…]` (`[^…]`), `\` escapes; per path component. */

export const hasGlob = (path: string): boolean => /[*?[]/.test(path);

const cache = new Map<string, RegExp>();

/** One component pattern as a RegExp; `/` is never matched. */
export function componentRegExp(pattern: string): RegExp {
  const known = cache.get(pattern);
  if (known) return known;
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '\\' && i + 1 < pattern.length) re += escapeRe(pattern[++i]!);
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) throw new Error(`syntax error in pattern "${pattern}": unclosed [`);
      let body = pattern.slice(i + 1, end);
      const negate = body.startsWith('^') || body.startsWith('!');
      if (negate) body = body.slice(1);
      re += `[${negate ? '^' : ''}${body.replace(/[\]\\]/g, '\\$&')}]`;
      i = end;
    } else re += escapeRe(c);
  }
  const compiled = new RegExp(`^${re}$`);
  cache.set(pattern, compiled);
  return compiled;
}

const escapeRe = (c: string): string => c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/** Whether `path` (relative, `/`-separated) matches `pattern` component by component. */
export function matchPath(pattern: string, path: string): boolean {
  const pp = pattern.split('/');
  const parts = path.split('/');
  return pp.length === parts.length && pp.every((p, i) => componentRegExp(p).test(parts[i]!));
}
