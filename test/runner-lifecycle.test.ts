import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { Runner } from '../runner/containers.js';
import { processAlive } from '../runner/state.js';
import { promisify } from 'node:util';
import { writeImageLayout } from './harness/oci-layout.js';
import { startRegistryProcess, tempDir, type RegistryProcess } from './harness/registry.js';
import { RUNNER_CLI, cleanupRunner, requireRoot, runnerCli, startRunner, stateOf, waitFor, type RunnerHarness } from './harness/runner.js';

const execFileP = promisify(execFile);

function collector(input?: string) {
  const io = { stdout: new PassThrough(), stderr: new PassThrough(), stdin: input === undefined ? undefined : PassThroughOf(input) };
  let out = '';
  let err = '';
  io.stdout.on('data', (d: Buffer) => (out += d.toString()));
  io.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return { ...io, out: () => out, err: () => err };
}

function PassThroughOf(text: string): PassThrough {
  const p = new PassThrough();
  p.end(text);
  return p;
}

describe('runner lifecycle', { skip: requireRoot() }, () => {
  let h: RunnerHarness;
  /** Runs `script` with sh in the foreground; returns exit code and output. */
  const sh = async (script: string, flags: Parameters<Runner['run']>[0]['flags'] = {}, input?: string) => {
    const io = collector(input);
    const r = await h.runner.run({ image: h.image, cmd: ['sh', '-c', script], flags: { network: 'none', ...flags } }, io);
    return { code: r.exitCode, out: io.out(), err: io.err(), id: r.id };
  };
  const detached = async (script: string, flags: Parameters<Runner['run']>[0]['flags'] = {}) =>
    (await h.runner.run({ image: h.image, cmd: ['sh', '-c', script], flags: { network: 'none', detach: true, ...flags } })).id;

  before(async () => {
    h = await startRunner();
  });
  after(async () => {
    await h?.cleanup();
  });

  test('PID 1 is the entrypoint; the foreground run exits with its code and keeps stdout and stderr apart', async () => {
    const r = await sh('echo pid=$$; cat /proc/1/cmdline | tr "\\0" " "; echo; echo oops >&2; exit 3');
    assert.equal(r.code, 3);
    assert.match(r.out, /^pid=1\nsh -c echo pid/);
    assert.equal(r.err, 'oops\n');
    const io = collector();
    const e = await h.runner.run({ image: h.image, cmd: ['from', 'entrypoint'], flags: { network: 'none', entrypoint: '/bin/echo' } }, io);
    assert.equal(e.exitCode, 0);
    assert.equal(io.out(), 'from entrypoint\n');
  });

  test('the hostname is the container\'s own: its short id, or --hostname', async () => {
    const r = await sh('hostname; cat /etc/hostname');
    assert.equal(r.out, `${r.id.slice(0, 12)}\n${r.id.slice(0, 12)}\n`);
    assert.equal((await sh('hostname', { hostname: 'keel-1' })).out, 'keel-1\n');
    assert.notEqual(hostname(), 'keel-1');
  });

  test('-u, -w, -e, --env-file, --read-only and --tmpfs shape the process', async () => {
    const envFile = join(h.root, 'env');
    await writeFile(envFile, '# comment\nFROM_FILE=yes\n\nB=file\n');
    const r = await sh('id; pwd; echo A=$A B=$B F=$FROM_FILE', { user: 'app', workdir: '/work/sub', env: ['A=1', 'B=flag'], envFile: [envFile] });
    assert.match(r.out, /^uid=1000\(app\) gid=1000\(app\) groups=.*50\(staff\)/);
    assert.match(r.out, /\n\/work\/sub\nA=1 B=flag F=yes\n$/);
    assert.match((await sh('id', { user: '4321:50' })).out, /^uid=4321 gid=50\(staff\)/);
    await assert.rejects(sh('true', { user: 'nosuch' }), /unable to find user nosuch/);
    const ro = await sh('touch /x 2>/dev/null && echo root-writable; touch /scratch/y && echo tmpfs-writable', { readOnly: true, tmpfs: ['/scratch:size=1m'] });
    assert.equal(ro.out, 'tmpfs-writable\n');
  });

  test('-i feeds stdin until its end; /dev/stdout works inside', async () => {
    const r = await sh('cat; echo via-dev > /dev/stdout', { interactive: true }, 'hello\nworld\n');
    assert.equal(r.code, 0);
    assert.equal(r.out, 'hello\nworld\nvia-dev\n');
  });

  test('a detached container is found by a fresh client, answers exec, stops, and stopping it again is not an error', async () => {
    const id = await detached('trap "exit 0" TERM; while true; do sleep 0.1; done', { name: 'sloop-d' });
    const fresh = new Runner({ root: h.runner.paths.root, runcRoot: h.runner.paths.runcRoot });
    const listed = await fresh.ps();
    assert.deepEqual(listed.filter((c) => c.Id === id).map((c) => [c.Names, c.State]), [['sloop-d', 'running']]);
    assert.equal((await fresh.resolve('sloop-d')), id);
    assert.equal(await fresh.resolve(id.slice(0, 10)), id);
    const ex = await fresh.execOutput('sloop-d', ['sh', '-c', 'echo in $PWD as $(id -u); exit 4'], { user: 'app', workdir: '/tmp' });
    assert.deepEqual([ex.exitCode, ex.stdout], [4, 'in /tmp as 1000\n']);
    await assert.rejects(fresh.rm(id), /running; stop it first or use rm -f/);
    await fresh.stop('sloop-d', { time: 5 });
    const st = await stateOf(fresh, id);
    assert.deepEqual([st.Status, st.ExitCode], ['exited', 0]);
    await fresh.stop('sloop-d');
    await assert.rejects(fresh.kill('sloop-d'), /not running/);
    await fresh.rm(id);
    assert.equal((await fresh.ps({ all: true })).some((c) => c.Id === id), false);
  });

  test('names are unique; --rm removes the container after it exits', async () => {
    const id = await detached('sleep 30', { name: 'ketch-n' });
    await assert.rejects(detached('true', { name: 'ketch-n' }), /name "ketch-n" is already in use/);
    await h.runner.rm(id, { force: true });
    const r = await sh('echo bye', { rm: true });
    assert.equal(r.out, 'bye\n');
    // As with docker, a foreground run of a --rm container returns once the container is gone.
    assert.equal((await h.runner.ps({ all: true })).some((c) => c.Id === r.id), false, 'the --rm container is gone when run returns');
  });

  test("a named volume's data survives rm and reaches a new container; bind mounts and anonymous volumes", async () => {
    const host = join(h.root, 'host-dir');
    await mkdir(host);
    await writeFile(join(host, 'in'), 'from host\n');
    const first = await sh('echo kept > /data/f; cat /host/in; echo x > /host/new; touch /ro/x 2>/dev/null || echo ro-refused; echo a > /anon/f', {
      volume: ['cargo:/data', `${host}:/host`, `${host}:/ro:ro`, '/anon'],
    });
    assert.equal(first.out, 'from host\nro-refused\n');
    assert.equal(await readFile(join(host, 'new'), 'utf8'), 'x\n');
    const anon = ((await h.runner.inspect(first.id)).Mounts as { Destination: string; Source: string }[]).find((m) => m.Destination === '/anon')!.Source;
    await h.runner.rm(first.id, { volumes: true });
    assert.equal(existsSync(anon), false, 'rm -v removes the anonymous volume');
    assert.equal(existsSync(h.runner.paths.volume('cargo')), true, 'the named volume stays');
    assert.equal((await sh('cat /data/f', { volume: ['cargo:/data'] })).out, 'kept\n');
    await assert.rejects(sh('true', { volume: [`${host}/missing:/m`] }), /bind source path does not exist: .*missing/);
    assert.equal((await sh('cat /srv/seed.txt; echo changed > /srv/seed.txt', { volume: ['seeded:/srv'] })).out, 'seeded\n', 'a new volume starts with the image content at its mount point');
    assert.equal((await sh('cat /srv/seed.txt', { volume: ['seeded:/srv'] })).out, 'changed\n', 'and is not seeded again');
  });

  test('--restart on-failure:2 restarts exactly twice', async () => {
    const id = await detached('echo run; exit 3', { restart: 'on-failure:2' });
    assert.equal(await h.runner.wait(id, 30_000), 3);
    const doc = await h.runner.inspect(id);
    assert.equal(doc.RestartCount, 2);
    const out = collector();
    await h.runner.logs(id, out);
    assert.equal(out.out(), 'run\nrun\nrun\n');
  });

  test('health goes starting → healthy → unhealthy; without a restart policy it keeps running', async () => {
    const id = await detached('sleep 60', { healthCmd: 'test -e /tmp/ok', healthInterval: '100ms', healthRetries: '2', healthStartPeriod: '60s' });
    const health = async () => (await stateOf(h.runner, id)).Health!;
    await waitFor('a failing probe during the start period', async () => (await health()).Log.length >= 2);
    assert.deepEqual([(await health()).Status, (await health()).FailingStreak], ['starting', 0]);
    assert.match((await h.runner.ps()).find((c) => c.Id === id)!.Status, /\(health: starting\)/);
    await h.runner.execOutput(id, ['touch', '/tmp/ok']);
    await waitFor('healthy', async () => (await health()).Status === 'healthy');
    await h.runner.execOutput(id, ['rm', '/tmp/ok']);
    await waitFor('unhealthy', async () => (await health()).Status === 'unhealthy');
    assert.ok((await health()).FailingStreak >= 2);
    const st = await stateOf(h.runner, id);
    assert.deepEqual([st.Status, (await h.runner.inspect(id)).RestartCount], ['running', 0]);
    await h.runner.rm(id, { force: true });
  });

  test('an unhealthy container is restarted under its restart policy', async () => {
    const id = await detached('touch /tmp/ok; echo started; exec sleep 60', { restart: 'always', healthCmd: 'test -e /tmp/ok', healthInterval: '100ms', healthRetries: '1', stopTimeout: '1' });
    await waitFor('healthy', async () => (await stateOf(h.runner, id)).Health?.Status === 'healthy');
    await h.runner.execOutput(id, ['rm', '/tmp/ok']);
    await waitFor('a restart', async () => (await h.runner.inspect(id)).RestartCount === 1);
    await waitFor('healthy again', async () => (await stateOf(h.runner, id)).Health?.Status === 'healthy');
    const out = collector();
    await h.runner.logs(id, out);
    assert.equal(out.out(), 'started\nstarted\n');
    await h.runner.stop(id, { time: 1 });
    assert.equal((await h.runner.inspect(id)).RestartCount, 1, 'a stopped container is not restarted');
  });

  test('logs are kept after the container exits and rotated at the configured size', async () => {
    const id = await detached('i=1; while [ $i -le 200 ]; do printf "line-%03d\\n" $i; i=$((i+1)); done', { logOpt: ['max-size=1k', 'max-file=2'] });
    assert.equal(await h.runner.wait(id), 0);
    const dir = h.runner.paths.container(id).logDir;
    assert.deepEqual((await readdir(dir)).sort(), ['container.log', 'container.log.1']);
    for (const f of ['container.log', 'container.log.1']) assert.ok((await stat(join(dir, f))).size <= 1024, `${f} is within max-size`);
    const all = collector();
    await h.runner.logs(id, all);
    assert.match(all.out(), /line-200\n$/);
    assert.doesNotMatch(all.out(), /line-001/);
    const tail = collector();
    await h.runner.logs(id, tail, { tail: 3 });
    assert.equal(tail.out(), 'line-198\nline-199\nline-200\n');
    const slow = await detached('for i in 1 2 3; do echo f$i; sleep 0.2; done');
    const followed = collector();
    await h.runner.logs(slow, followed, { follow: true });
    assert.equal(followed.out(), 'f1\nf2\nf3\n', 'logs -f prints until the container stops');
  });

  test('bad input gets a clear error and changes nothing', async () => {
    const before = (await h.runner.ps({ all: true })).length;
    await assert.rejects(sh('true', { memory: '1k' }), /Minimum memory limit allowed is 6MB/);
    await assert.rejects(sh('true', { restart: 'sometimes' }), /invalid restart policy "sometimes"/);
    await assert.rejects(sh('true', { publish: ['80'] }), /--publish needs --network bridge/);
    const noRunc = new Runner({ root: h.runner.paths.root, runcRoot: h.runner.paths.runcRoot, env: { PATH: join(h.root, 'empty-bin') } });
    await assert.rejects(noRunc.create({ image: h.image, cmd: ['true'] }), /runc not found in PATH: apt-get install runc/);
    await assert.rejects(sh('true', { entrypoint: '/no/such/binary' }), /no such file or directory/);
    assert.equal((await h.runner.ps({ all: true })).length, before + 1, 'only the container whose binary was missing is left (created, as docker)');
  });

  test('a container whose supervisor was killed keeps running, is shown so, and can still be stopped', async () => {
    const id = await detached('sleep 60');
    const shimPid = (JSON.parse(await readFile(h.runner.paths.container(id).state, 'utf8')) as { ShimPid: number }).ShimPid;
    assert.ok(shimPid > 1, 'state.json names the supervisor once the container was reported started');
    process.kill(shimPid, 'SIGKILL');
    await waitFor('the supervisor to be gone', async () => !processAlive(shimPid, 'x') && !existsSync(`/proc/${shimPid}`));
    const st = await stateOf(h.runner, id);
    assert.equal(st.Status, 'running');
    assert.match(String((st as { Error?: string }).Error), /supervisor of this container is gone/);
    await h.runner.stop(id, { time: 1 });
    assert.equal((await stateOf(h.runner, id)).Status, 'exited');
    await h.runner.rm(id);
  });
});

describe('runner on the bridge network', { skip: requireRoot() }, () => {
  let h: RunnerHarness;
  const web = `web-${randomBytes(3).toString('hex')}`;
  before(async () => {
    h = await startRunner({ bridge: true });
  });
  after(async () => {
    await h?.cleanup();
  });

  test('a published port answers through the host, and another container reaches the server by name', async () => {
    const serve = 'mkdir -p /www && echo hello-web > /www/index.html && exec httpd -f -p 80 -h /www';
    const id = (await h.runner.run({ image: h.image, cmd: ['sh', '-c', serve], flags: { detach: true, name: web, publish: ['127.0.0.1::80'] } })).id;
    const ports = ((await h.runner.inspect(id)).NetworkSettings as { Ports: Record<string, { HostIp: string; HostPort: string }[]>; IPAddress: string });
    const hostPort = Number(ports.Ports['80/tcp']![0]!.HostPort);
    assert.ok(hostPort > 0);
    assert.match(ports.IPAddress, /^10\.215\./);
    const body = await waitFor('the server to answer through the published port', () => httpGet(`http://127.0.0.1:${hostPort}/`));
    assert.equal(body, 'hello-web\n');
    const io = collector();
    const client = await h.runner.run({ image: h.image, cmd: ['wget', '-qO-', `http://${web}/`], flags: { rm: true } }, io);
    assert.deepEqual([client.exitCode, io.out()], [0, 'hello-web\n']);
    await assert.rejects(h.runner.run({ image: h.image, cmd: ['true'], flags: { detach: true, publish: [`127.0.0.1:${hostPort}:80`] } }), /already in use/);
    const none = collector();
    await h.runner.run({ image: h.image, cmd: ['cat', '/proc/net/dev'], flags: { network: 'none', rm: true } }, none);
    assert.deepEqual(none.out().split('\n').slice(2).filter(Boolean).map((l) => l.trim().split(':')[0]), ['lo']);
    await h.runner.stop(id, { time: 1 });
    await assert.rejects(httpGet(`http://127.0.0.1:${hostPort}/`), 'the published port is closed once the container stopped');
  });
});

function httpGet(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: 2000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

describe('slipway CLI end to end: an image pushed to the registry, pulled and run', { skip: requireRoot() ?? (existsSync('/usr/bin/skopeo') ? undefined : assert.fail('needs skopeo: apt-get install skopeo')) }, () => {
  let registry: RegistryProcess;
  let work: string;
  let env: NodeJS.ProcessEnv;
  let ref: string;
  const slipway = (...args: string[]) => runnerCli(args, env);

  before(async () => {
    registry = await startRegistryProcess();
    work = await tempDir('slipway-runner-cli-');
    env = { ...process.env, SLIPWAY_RUNNER_ROOT: join(work, 'root'), SLIPWAY_RUNC_ROOT: join(work, 'runc') };
    await writeImageLayout(join(work, 'layout'), { tag: 'v1', cmd: ['/bin/sh', '-c', 'echo hello from the registry'], label: randomBytes(8).toString('hex') });
    ref = `${registry.host}/e2e/runner-${randomBytes(4).toString('hex')}:v1`;
    await execFileP('/usr/bin/skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(work, 'layout')}:v1`, `docker://${ref}`]);
  });
  after(async () => {
    await registry?.cleanup();
    if (work) await cleanupRunner(new Runner({ root: join(work, 'root'), runcRoot: join(work, 'runc') }), work);
  });

  test('run pulls a missing image, prints its output and exits with its code', async () => {
    const first = await slipway('run', '--rm', '--network', 'none', ref);
    assert.equal(first.code, 0, first.stderr);
    assert.equal(first.stdout, 'hello from the registry\n');
    assert.match(first.stderr, /Unable to find image/);
    const images = await slipway('images');
    assert.match(images.stdout, new RegExp(`^${ref.split(':v1')[0]!.replace(/[.]/g, '\\.')}\\s+v1\\s+[0-9a-f]{12}`, 'm'));
    const again = await slipway('run', '--rm', '--network', 'none', ref, 'sh', '-c', 'echo $0 $1; exit 7', 'a', '-x');
    assert.deepEqual([again.code, again.stdout, again.stderr], [7, 'a -x\n', '']);
    // `run --rm` returns once its container is removed, so its name is free again at once.
    const name = `once-${randomBytes(3).toString('hex')}`;
    for (let i = 0; i < 2; i++) {
      const r = await slipway('run', '--rm', '--name', name, '--network', 'none', ref, 'sh', '-c', 'exit 0');
      assert.equal(r.code, 0, r.stderr);
    }
    const unprepared = await slipway('run', '--rm', '--network', 'none', '-u', 'nosuchuser', ref);
    assert.deepEqual([unprepared.code, unprepared.stderr], [125, 'slipway: unable to find user nosuchuser: no matching entries in passwd file\n']);
    assert.equal((await slipway('ps', '-aq')).stdout, '');
  });

  test('run -d, ps, logs, exec, stop (twice), rm, and rmi refusing an image in use', async () => {
    const name = `cli-${randomBytes(3).toString('hex')}`;
    const started = await slipway('run', '-d', '--name', name, '--network', 'none', ref, 'sh', '-c', 'echo up; exec sleep 300');
    assert.equal(started.code, 0, started.stderr);
    assert.match(started.stdout, /^[0-9a-f]{64}\n$/);
    assert.match((await slipway('ps')).stdout, new RegExp(`Up .*${name}$`, 'm'));
    assert.equal((await waitFor('the log line', async () => ((await slipway('logs', name)).stdout === 'up\n' ? 'up\n' : undefined))), 'up\n');
    const ex = await slipway('exec', name, 'sh', '-c', 'echo in; exit 3');
    assert.deepEqual([ex.code, ex.stdout], [3, 'in\n']);
    assert.deepEqual(await slipway('stop', '-t', '1', name), { code: 0, stdout: `${name}\n`, stderr: '' });
    assert.equal((await slipway('stop', name)).code, 0, 'stopping an exited container is not an error');
    assert.match((await slipway('ps', '-a')).stdout, new RegExp(`Exited \\(137\\).*${name}$`, 'm'));
    const refused = await slipway('rmi', ref);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /used by a container/);
    assert.equal((await slipway('rm', name)).code, 0);
    const removed = await slipway('rmi', ref);
    assert.equal(removed.code, 0, removed.stderr);
    assert.match(removed.stdout, /Untagged: /);
  });

  test('run -it gets a terminal (runc on the caller\'s terminal, here one made by script(1))', { skip: existsSync('/usr/bin/script') ? undefined : assert.fail('needs script(1): apt-get install bsdutils') }, async () => {
    const command = [process.execPath, RUNNER_CLI, 'run', '-it', '--rm', '--network', 'none', ref, 'sh', '-c', 'tty; exit 5'].map((a) => `'${a}'`).join(' ');
    const r = await execFileP('/usr/bin/script', ['-qec', command, '/dev/null'], { env, timeout: 60_000 }).then(
      (ok) => ({ code: 0, stdout: ok.stdout }),
      (err: { code: number; stdout: string }) => ({ code: err.code, stdout: err.stdout }),
    );
    assert.equal(r.code, 5);
    assert.match(r.stdout, /\/dev\/pts\/\d+/);
    const noTty = await slipway('run', '-t', '--network', 'none', ref);
    assert.equal(noTty.code, 125);
    assert.match(noTty.stderr, /the input device is not a TTY/);
  });

  test('bad input: runc missing from PATH, --memory 1k, an unknown container', async () => {
    const noRunc = await runnerCli(['run', '--network', 'none', ref], { ...env, PATH: join(work, 'empty') });
    assert.equal(noRunc.code, 125);
    assert.match(noRunc.stderr, /runc not found in PATH: apt-get install runc/);
    const small = await slipway('run', '--memory', '1k', ref);
    assert.deepEqual([small.code, small.stderr], [125, 'slipway: Minimum memory limit allowed is 6MB\n']);
    const unknown = await slipway('stop', 'no-such-container');
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /no such container: no-such-container/);
  });
});
