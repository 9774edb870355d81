import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { rm } from 'node:fs/promises';
import { DockerfileError } from '../builder/dockerfile/errors.js';
import { lookupIn, processWord, processWords } from '../builder/dockerfile/expand.js';
import { evaluate, type Op } from '../builder/dockerfile/instructions.js';
import { parseMount } from '../builder/dockerfile/mounts.js';
import { parseDockerfile, type Node } from '../builder/dockerfile/parse.js';
import { globalArgValues, parseFrom, splitStages, targetStage } from '../builder/dockerfile/stages.js';
import { BuildContext, SourceError, digestSources } from '../builder/context.js';
import { applyOp, initialState } from '../builder/image.js';
import { explainMiss } from '../builder/cache.js';
import { tempDir } from './harness/registry.js';
import { writeContext } from './harness/build-fixtures.js';

const parse = (text: string) => parseDockerfile(text, 'Dockerfile');
const only = (text: string): Node => {
  const nodes = parse(text).nodes;
  assert.equal(nodes.length, 1, `one instruction in ${JSON.stringify(text)}`);
  return nodes[0]!;
};
const vars = (v: Record<string, string>) => lookupIn(v);
const evalOp = (text: string, v: Record<string, string> = {}, shell = ['/bin/sh', '-c']): Op => evaluate(only(text), { file: 'Dockerfile', escape: '\\', lookup: vars(v), shell });
const errorOf = (fn: () => unknown): DockerfileError => {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof DockerfileError, `a DockerfileError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected an error');
};

test('continuations join lines; comments and blank lines inside them vanish; lines are numbered', () => {
  const p = parse('# a comment\nFROM busybox\n\nRUN echo a \\\n  # inside\n\n  && echo b\n  ENV A=1\n');
  assert.deepEqual(p.nodes.map((n) => [n.keyword, n.line, n.endLine]), [['FROM', 2, 2], ['RUN', 4, 7], ['ENV', 8, 8]]);
  assert.equal(p.nodes[1]!.args, 'echo a   && echo b');
  assert.ok(p.warnings.some((w) => w.includes('empty continuation line')));
});

test('the escape directive switches to backtick; syntax is accepted and ignored; directives only at the top', () => {
  const p = parse('# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\nRUN dir c:\\ `\n  && echo done\n');
  assert.equal(p.escape, '`');
  assert.equal(p.syntax, 'docker/dockerfile:1');
  assert.equal(p.nodes[1]!.args, 'dir c:\\   && echo done');
  const late = parse('FROM scratch\n# escape=`\nRUN a \\\n b\n');
  assert.equal(late.escape, '\\');
  assert.equal(late.nodes[1]!.args, 'a  b');
  assert.match(errorOf(() => parse('# escape=`\n# escape=\\\nFROM scratch\n')).message, /^Dockerfile:2: only one "escape" parser directive/);
  assert.match(errorOf(() => parse('# escape=x\nFROM scratch\n')).message, /^Dockerfile:1: invalid escape token/);
});

test('an unknown instruction names its line (and the likely one)', () => {
  const e = errorOf(() => parse('FROM scratch\n\n\n\n\n\nCOPPY a b\n'));
  assert.equal(e.message, 'Dockerfile:7: unknown instruction "COPPY" (did you mean COPY?)');
  assert.equal(e.line, 7);
});

test('heredocs: script bodies, <<- strips tabs, quoted delimiters do not expand, COPY heredoc files', () => {
  const run = only('RUN <<EOF\necho one\necho two\nEOF\n');
  assert.deepEqual(run.heredocs, [{ name: 'EOF', content: 'echo one\necho two\n', expand: true, chomp: false }]);
  assert.deepEqual((evalOp('RUN <<EOF\necho one\nEOF\n') as { argv: string[] }).argv, ['/bin/sh', '-c', 'echo one\n']);
  const shebang = evalOp('RUN <<EOF\n#!/bin/sh\necho x\nEOF\n') as Extract<Op, { kind: 'RUN' }>;
  assert.deepEqual(shebang.script, { name: 'EOF', content: '#!/bin/sh\necho x\n' });
  const chomp = only('RUN <<-EOT\n\t\techo tabs\n\tEOT\nENV A=1\n'.split('ENV')[0]!);
  assert.equal(chomp.heredocs[0]!.content, 'echo tabs\n');
  const inline = evalOp("RUN cat <<'EOF' > /f\n$HOME\nEOF\n") as Extract<Op, { kind: 'RUN' }>;
  assert.deepEqual(inline.argv, ['/bin/sh', '-c', "cat <<'EOF' > /f\n$HOME\nEOF"]);
  const copy = evalOp('COPY <<A <<"B" /dst/\nhello $NAME\nA\nraw $NAME\nB\n', { NAME: 'you' }) as Extract<Op, { kind: 'COPY' | 'ADD' }>;
  assert.deepEqual(copy.inline, [{ name: 'A', content: 'hello you\n' }, { name: 'B', content: 'raw $NAME\n' }]);
  assert.deepEqual(copy.sources, []);
  const p = parse('FROM scratch\nRUN <<EOF\nls\nEOF\nCMD ["x"]\n');
  assert.deepEqual(p.nodes.map((n) => [n.keyword, n.line, n.endLine]), [['FROM', 1, 1], ['RUN', 2, 4], ['CMD', 5, 5]]);
  assert.match(errorOf(() => parse('FROM scratch\nRUN <<EOF\necho\n')).message, /^Dockerfile:2: unterminated heredoc/);
});

test('variable expansion as docker does it', () => {
  const v = vars({ A: 'a', E: '', SP: 'x y' });
  const w = (s: string) => processWord(s, v);
  assert.equal(w('$A'), 'a');
  assert.equal(w('${A}b'), 'ab');
  assert.equal(w('$Ab'), '');
  assert.equal(w('${U:-dflt}'), 'dflt');
  assert.equal(w('${E:-dflt}'), 'dflt');
  assert.equal(w('${E-dflt}'), '');
  assert.equal(w('${A:+alt}'), 'alt');
  assert.equal(w('${U:+alt}'), '');
  assert.equal(w('${U:-${A}x}'), 'ax');
  assert.equal(w('\\$A'), '$A');
  assert.equal(w("'$A'"), '$A');
  assert.equal(w('"$A \\" \\n"'), 'a " \\n');
  assert.equal(w('$'), '$');
  assert.equal(w('a\\ b'), 'a b');
  assert.deepEqual(processWords('one "two three" $SP', v), ['one', 'two three', 'x y']);
  assert.throws(() => w('${U:?is required}'), /U: is required/);
  assert.throws(() => w('${A%x}'), /unsupported modifier/);
  assert.equal(processWord('`$A', v, '`'), '$A');
});

test('per-instruction expansion: ENV sees the values from before the line, RUN and CMD are left to the shell', () => {
  const env = evalOp('ENV A=new B=$A C="quoted $A" D=\\$A', { A: 'old' }) as Extract<Op, { kind: 'ENV' | 'LABEL' }>;
  assert.deepEqual(env.pairs, [['A', 'new'], ['B', 'old'], ['C', 'quoted old'], ['D', '$A']]);
  assert.deepEqual((evalOp('ENV LEGACY hello world') as Extract<Op, { kind: 'ENV' | 'LABEL' }>).pairs, [['LEGACY', 'hello world']]);
  assert.deepEqual((evalOp('LABEL "com.example.x"="a b" c=d') as Extract<Op, { kind: 'ENV' | 'LABEL' }>).pairs, [['com.example.x', 'a b'], ['c', 'd']]);
  assert.deepEqual((evalOp('RUN echo $A') as Extract<Op, { kind: 'RUN' }>).argv, ['/bin/sh', '-c', 'echo $A']);
  assert.deepEqual((evalOp('CMD echo $A', {}, ['/bin/bash', '-lc']) as Extract<Op, { kind: 'CMD' | 'ENTRYPOINT' | 'SHELL' }>).argv, ['/bin/bash', '-lc', 'echo $A']);
  assert.deepEqual((evalOp('ENTRYPOINT ["/app", "$A"]') as Extract<Op, { kind: 'CMD' | 'ENTRYPOINT' | 'SHELL' }>).argv, ['/app', '$A']);
  assert.deepEqual((evalOp('WORKDIR /srv/$A', { A: 'x' }) as { value: string }).value, '/srv/x');
  assert.deepEqual((evalOp('EXPOSE 80 $P/udp 9000-9002', { P: '53' }) as Extract<Op, { kind: 'EXPOSE' }>).ports, ['80/tcp', '53/udp', '9000/tcp', '9001/tcp', '9002/tcp']);
  const copy = evalOp('COPY --chown=$U:$U --chmod=640 --exclude=*.md --from=build ${SRC} /dst/', { U: 'app', SRC: 'out' }) as Extract<Op, { kind: 'COPY' | 'ADD' }>;
  assert.deepEqual([copy.chown, copy.chmod, copy.exclude, copy.from, copy.sources, copy.dest], ['app:app', 0o640, ['*.md'], 'build', ['out'], '/dst/']);
  assert.deepEqual((evalOp('COPY ["a b", "/c d/"]') as Extract<Op, { kind: 'COPY' | 'ADD' }>).sources, ['a b']);
});

test('bad arguments are errors that name the line', () => {
  const at = (text: string) => errorOf(() => evaluate(parse(`FROM scratch\n${text}\n`).nodes[1]!, { file: 'Dockerfile', escape: '\\', lookup: vars({}), shell: [] })).message;
  assert.match(at('COPY onlyone'), /^Dockerfile:2: COPY requires at least two arguments/);
  assert.match(at('EXPOSE eighty'), /^Dockerfile:2: EXPOSE: invalid port "eighty"/);
  assert.match(at('SHELL /bin/sh -c'), /^Dockerfile:2: SHELL requires the arguments to be in JSON form/);
  assert.match(at('COPY --chmod=rwx a b'), /^Dockerfile:2: COPY --chmod=rwx/);
  assert.match(at('COPY --nope a b'), /^Dockerfile:2: unknown flag --nope for COPY/);
  assert.match(at('HEALTHCHECK --interval=soon CMD true'), /^Dockerfile:2: HEALTHCHECK --interval=soon/);
  assert.match(at('RUN --mount=type=ssh true'), /^Dockerfile:2: RUN --mount=type=ssh: mount type "ssh" is not supported/);
  assert.match(at('ENV A'), /^Dockerfile:2: ENV A needs a value/);
  assert.match(at('ENV A=${X:?must_be_set}'), /^Dockerfile:2: ENV: X: must_be_set/);
  assert.match(at('ONBUILD FROM x'), /^Dockerfile:2: FROM isn't allowed as an ONBUILD trigger/);
  assert.match(errorOf(() => splitStages(parse('RUN true\nFROM scratch\n'), 'Dockerfile')).message, /^Dockerfile:1: RUN before the first FROM/);
});

test('HEALTHCHECK, ENTRYPOINT resetting an inherited CMD, SHELL, ONBUILD and USER shape the config', () => {
  let s = initialState({ Cmd: ['sh'], Env: ['PATH=/bin'], OnBuild: ['RUN x'] });
  assert.equal(s.config.OnBuild, undefined, 'ONBUILD triggers are not inherited');
  const apply = (text: string) => (s = applyOp(s, evalOp(text)));
  apply('ENTRYPOINT ["/app"]');
  assert.equal(s.config.Cmd, null);
  apply('CMD ["--help"]');
  apply('ENTRYPOINT ["/app2"]');
  assert.deepEqual(s.config.Cmd, ['--help'], 'a CMD of this stage survives ENTRYPOINT');
  apply('HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost');
  assert.deepEqual(s.config.Healthcheck, { Test: ['CMD-SHELL', 'wget -q localhost'], Interval: 5e9, Retries: 2 });
  apply('HEALTHCHECK NONE');
  assert.deepEqual(s.config.Healthcheck, { Test: ['NONE'] });
  apply('SHELL ["/bin/ash", "-eo", "pipefail", "-c"]');
  apply('ONBUILD RUN echo child');
  apply('WORKDIR app');
  apply('WORKDIR sub');
  apply('USER 1000:1000');
  apply('STOPSIGNAL SIGINT');
  apply('VOLUME ["/data", "/logs"]');
  assert.deepEqual(s.config.Shell, ['/bin/ash', '-eo', 'pipefail', '-c']);
  assert.deepEqual(s.config.OnBuild, ['RUN echo child']);
  assert.equal(s.config.WorkingDir, '/app/sub');
  assert.equal(s.config.User, '1000:1000');
  assert.equal(s.config.StopSignal, 'SIGINT');
  assert.deepEqual(Object.keys(s.config.Volumes ?? {}), ['/data', '/logs']);
});

test('stages: ARG before FROM, AS names, --target', () => {
  const p = parse('ARG BASE=busybox\nARG TAG\nFROM ${BASE}:${TAG:-latest} AS Build\nRUN x\nFROM scratch\nCOPY --from=build /a /a\n');
  const s = splitStages(p, 'Dockerfile');
  assert.equal(s.globalArgs.length, 2);
  const globals = globalArgValues(s, { TAG: '1.2' });
  assert.deepEqual(parseFrom(s.stages[0]!.from, s, globals), { image: 'busybox:1.2', name: 'build' });
  assert.equal(globals.get('TARGETARCH'), 'amd64');
  const names = s.stages.map((st) => parseFrom(st.from, s, globals).name);
  assert.equal(targetStage(s, names, 'BUILD').index, 0);
  assert.equal(targetStage(s, names, undefined).index, 1);
  assert.match(errorOf(() => targetStage(s, names, 'nope')).message, /target stage "nope" could not be found; the stages are: build/);
  assert.match(errorOf(() => parseFrom(parse('FROM a b c d').nodes[0]!, s, globals)).message, /^Dockerfile:1: FROM requires an image/);
  assert.match(errorOf(() => parseFrom(parse('FROM --platform=linux/arm64 a').nodes[0]!, s, globals)).message, /linux\/amd64 images only/);
});

test('RUN --mount specifications', () => {
  assert.deepEqual(parseMount('type=cache,target=/root/.cache,sharing=locked'), { type: 'cache', target: '/root/.cache', id: '/root/.cache', sharing: 'locked', readonly: false, mode: 0o755, uid: 0, gid: 0 });
  assert.deepEqual(parseMount('type=secret,id=token,env=TOKEN'), { type: 'secret', id: 'token', env: 'TOKEN', required: false, mode: 0o400, uid: 0, gid: 0 });
  assert.deepEqual(parseMount('type=secret,id=t,dst=/etc/t,required,mode=0440'), { type: 'secret', id: 't', target: '/etc/t', required: true, mode: 0o440, uid: 0, gid: 0 });
  assert.deepEqual(parseMount('target=/src,source=app'), { type: 'bind', target: '/src', source: 'app', readwrite: false });
  assert.throws(() => parseMount('type=cache,target=rel'), /absolute/);
  assert.throws(() => parseMount('type=tmpfs,target=/t,bogus=1'), /unknown key "bogus"/);
});

test('.dockerignore with ! exceptions, globs, symlinks that leave the context, digests', async () => {
  const dir = await tempDir('slipway-ctx-');
  try {
    await writeContext(dir, {
      'a.log': 'x',
      'keep.log': 'k',
      'docs/a.md': 'a',
      'docs/README.md': 'r',
      'src/x.ts': 'x',
      'src/y.ts': 'y',
      'src/z.js': 'z',
      'inside': { symlink: 'src/x.ts' },
      'outside': { symlink: '/etc/passwd' },
      'climb': { symlink: '../../etc' },
    });
    const ctx = new BuildContext(dir, ['*.log', '!keep.log', 'docs', '!docs/README.md']);
    const listed = [...(await ctx.listing()).keys()].sort();
    assert.deepEqual(listed, ['', 'climb', 'docs', 'docs/README.md', 'inside', 'keep.log', 'outside', 'src', 'src/x.ts', 'src/y.ts', 'src/z.js']);
    const globbed = await ctx.resolve('src/*.ts');
    assert.deepEqual(globbed.map((s) => s.name), ['x.ts', 'y.ts']);
    const all = await ctx.resolve('.', ['src/*.js', 'outside', 'climb']);
    assert.ok(!all[0]!.entries.some((e) => e.rel === 'src/z.js' || e.rel === 'outside'));
    const linked = await ctx.resolve('inside');
    assert.equal(linked[0]!.name, 'inside');
    assert.equal(linked[0]!.entries[0]!.abs, join(dir, 'src/x.ts'));
    await assert.rejects(ctx.resolve('outside'), (e: Error) => e instanceof SourceError && /outside is a symlink to \/etc\/passwd, which is outside the build context/.test(e.message));
    await assert.rejects(ctx.resolve('climb/passwd'), /outside the build context/);
    await assert.rejects(ctx.resolve('../x'), /forbidden path outside the build context: \.\.\/x/);
    await assert.rejects(ctx.resolve('a.log'), /file excluded by \.dockerignore: a\.log/);
    await assert.rejects(ctx.resolve('missing.txt'), /file not found in build context: missing\.txt/);
    await assert.rejects(ctx.resolve('*.none'), /no source files were specified/);
    const d1 = await digestSources(await ctx.resolve('src'));
    assert.deepEqual(Object.keys(d1.files).sort(), ['src/x.ts', 'src/y.ts', 'src/z.js']);
    await writeContext(dir, { 'src/y.ts': 'changed' });
    const d2 = await digestSources(await new BuildContext(dir, []).resolve('src'));
    assert.notEqual(d1.digest, d2.digest);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a cache miss is explained by what changed since the last build', () => {
  const prev = [
    { stage: 'app', position: 0, instruction: 'FROM base', source: 'sha256:aaa' },
    { stage: 'app', position: 1, instruction: 'ENV A=1' },
    { stage: 'app', position: 2, instruction: 'COPY . /app', files: { 'app.js': '1', 'b.js': '2' } },
  ];
  const cur = structuredClone(prev);
  cur[2]!.files = { 'app.js': '9', 'b.js': '2' };
  assert.equal(explainMiss(cur, prev, 'app', 2), 'context file app.js changed');
  cur[1]!.instruction = 'ENV A=2';
  assert.equal(explainMiss(cur, prev, 'app', 2), 'instruction changed: ENV A=2');
  cur[0]!.source = 'sha256:bbbbbbbbbbbbbbbbbbbb';
  assert.equal(explainMiss(cur, prev, 'app', 2), 'base image changed (now sha256:bbbbbbbbbbbb)');
  assert.equal(explainMiss(cur, undefined, 'app', 2), 'not in the cache (no earlier build of this tag)');
});
