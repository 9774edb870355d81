import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { cpuUsageNs, freezerState, pidsCurrent, pidsLimitHits, v1Value } from '../runner/cgroup-stats.js';
import type { RunFlags } from '../runner/options.js';
import { readInContainer, requireRoot, startRunner, stateOf, waitFor, type RunnerHarness } from './harness/runner.js';

/** A whole block device to throttle (bps limits refuse partitions), or undefined. */
function blockDevice(): string | undefined {
  const name = readdirSync('/sys/block').find((d) => !/^(loop|ram|zram|dm-)/.test(d) && existsSync(`/dev/${d}`));
  return name ? `/dev/${name}` : undefined;
}

const blkioWeightFile = ['/sys/fs/cgroup/blkio/blkio.weight', '/sys/fs/cgroup/blkio/blkio.bfq.weight'].some((f) => existsSync(f));

describe('runner cgroups', { skip: requireRoot() }, () => {
  let h: RunnerHarness;
  const detached = async (script: string, flags: RunFlags = {}) =>
    (await h.runner.run({ image: h.image, cmd: ['sh', '-c', script], flags: { network: 'none', detach: true, ...flags } })).id;
  const logsOf = async (id: string) => {
    const out = new PassThrough();
    let text = '';
    out.on('data', (d: Buffer) => (text += d.toString()));
    await h.runner.logs(id, { stdout: out, stderr: out });
    return text;
  };

  before(async () => {
    h = await startRunner();
  });
  after(async () => {
    await h?.cleanup();
  });

  test('a memory hog above --memory is OOM-killed and inspect says so', async () => {
    // Bounded: 24 doublings is 16 MiB of string, several times the limit (sh holds copies).
    const id = await detached('x=0123456789abcdef; i=0; while [ $i -lt 24 ]; do x=$x$x; i=$((i+1)); done; echo survived', { memory: '8m', memorySwap: '8m' });
    assert.equal(await h.runner.wait(id), 137);
    const st = await stateOf(h.runner, id);
    assert.deepEqual([st.Status, st.OOMKilled], ['exited', true]);
    assert.doesNotMatch(await logsOf(id), /survived/);
    const calm = await detached('sleep 30', { memory: '32m' });
    assert.equal(await v1Value(calm, 'memory', 'memory.limit_in_bytes'), String(32 << 20));
    if (existsSync('/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes')) assert.equal(await v1Value(calm, 'memory', 'memory.memsw.limit_in_bytes'), String(64 << 20), 'swap defaults to the memory limit, as docker');
    await h.runner.rm(calm, { force: true });
    assert.equal((await stateOf(h.runner, id)).OOMKilled, true);
  });

  test('--pids-limit stops a fork bomb', async () => {
    // At most 30 sleepers; the subshell stops at its first failed fork, PID 1 then waits without forking.
    const id = await detached('(i=0; while [ $i -lt 30 ]; do sleep 300 & i=$((i+1)); echo spawned $i; done) 2>&1; echo "bomb exit $?"; exec sleep 300', { pidsLimit: '10' });
    const log = await waitFor('the bomb to stop', async () => ((await logsOf(id)).includes('bomb exit') ? logsOf(id) : undefined));
    assert.match(log, /can't fork/);
    assert.match(log, /bomb exit [1-9]/);
    const spawned = [...log.matchAll(/spawned (\d+)/g)].map((m) => Number(m[1]));
    assert.ok(spawned.length > 0 && spawned.length < 30, `spawned ${spawned.length} of 30`);
    assert.ok((await pidsCurrent(id))! <= 10);
    assert.ok((await pidsLimitHits(id))! >= 1, 'pids.events counts refused forks');
    await h.runner.rm(id, { force: true });
  });

  test('--cpus 0.5 gets about half a core (cgroup cpu counters over elapsed time)', async () => {
    const id = await detached('i=0; while [ $i -lt 50000000 ]; do i=$((i+1)); done', { cpus: '0.5' });
    assert.deepEqual([await v1Value(id, 'cpu', 'cpu.cfs_quota_us'), await v1Value(id, 'cpu', 'cpu.cfs_period_us')], ['50000', '100000']);
    await waitFor('the loop to use CPU', async () => ((await cpuUsageNs(id)) ?? 0) > 50e6);
    const [u0, t0] = [(await cpuUsageNs(id))!, process.hrtime.bigint()];
    await sleep(1500);
    const [u1, t1] = [(await cpuUsageNs(id))!, process.hrtime.bigint()];
    const share = (u1 - u0) / Number(t1 - t0);
    assert.ok(share > 0.3 && share < 0.7, `the container used ${share.toFixed(2)} of a core`);
    await h.runner.rm(id, { force: true });
  });

  test('pause freezes the container (its counter stops) and unpause resumes it', async () => {
    const id = await detached('i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i > /tmp/count; usleep 20000; done');
    const count = async () => Number(await readInContainer(h.runner, id, '/tmp/count'));
    const c0 = await waitFor('the counter to run', async () => ((await count()) > 0 ? count() : undefined));
    await waitFor('the counter to move', async () => (await count()) > c0);
    await h.runner.pause(id);
    assert.equal(await freezerState(id), 'FROZEN');
    assert.equal((await stateOf(h.runner, id)).Status, 'paused');
    assert.match((await h.runner.ps()).find((c) => c.Id === id)!.Status, /\(Paused\)$/);
    await assert.rejects(h.runner.execOutput(id, ['true']), /paused: unpause it/);
    await assert.rejects(h.runner.pause(id), /already paused/);
    const frozen = await count();
    await sleep(300);
    assert.equal(await count(), frozen, 'no step while frozen');
    await h.runner.unpause(id);
    assert.equal(await freezerState(id), 'THAWED');
    await waitFor('the counter to move again', async () => (await count()) > frozen);
    await h.runner.rm(id, { force: true });
  });

  test('cpu shares, cpusets, block IO limits, net_cls/net_prio and devices reach the cgroup', async () => {
    const disk = blockDevice();
    const flags: RunFlags = { cpuShares: '512', cpusetCpus: '0', cpusetMems: '0', netClsClassid: '10:1', netPrio: ['lo=5'], device: ['/dev/null:/dev/mynull:rw'] };
    if (disk) Object.assign(flags, { deviceReadBps: [`${disk}:1mb`], deviceWriteBps: [`${disk}:2mb`] });
    const id = await detached('echo x > /dev/mynull && echo mynull-ok; mknod /tmp/mem c 1 1; head -c1 /tmp/mem 2>&1; exec sleep 300', flags);
    assert.equal(await v1Value(id, 'cpu', 'cpu.shares'), '512');
    assert.equal(await v1Value(id, 'cpuset', 'cpuset.cpus'), '0');
    assert.equal(await v1Value(id, 'cpuset', 'cpuset.mems'), '0');
    assert.equal(await v1Value(id, 'net_cls', 'net_cls.classid'), String(0x100001));
    assert.match((await v1Value(id, 'net_prio', 'net_prio.ifpriomap'))!, /^lo 5$/m);
    if (disk) {
      const { rdev } = await import('node:fs').then((fs) => fs.statSync(disk, { bigint: true }));
      const dev = `${Number((rdev >> 8n) & 0xfffn)}:${Number(rdev & 0xffn)}`;
      assert.equal(await v1Value(id, 'blkio', 'blkio.throttle.read_bps_device'), `${dev} 1048576`);
      assert.equal(await v1Value(id, 'blkio', 'blkio.throttle.write_bps_device'), `${dev} 2097152`);
    }
    const log = await waitFor('the device checks', async () => ((await logsOf(id)).includes('/tmp/mem') ? logsOf(id) : undefined));
    assert.match(log, /mynull-ok/);
    assert.match(log, /\/tmp\/mem: Operation not permitted/, 'a device outside the allowlist cannot be read, even after mknod');
    await h.runner.rm(id, { force: true });
  });

  test('limits this host cannot meet are refused with a clear error before anything is created', async () => {
    const before = (await h.runner.ps({ all: true })).length;
    const refuse = (flags: RunFlags, re: RegExp) => assert.rejects(h.runner.create({ image: h.image, cmd: ['true'], flags }), re);
    await refuse({ memory: '1k' }, /Minimum memory limit allowed is 6MB/);
    await refuse({ memory: '64m', memorySwap: '32m' }, /Minimum memoryswap limit should be larger than memory limit/);
    await refuse({ memorySwap: '64m' }, /always set the Memory limit when using Memoryswap/);
    await refuse({ cpus: '4096' }, /Range of CPUs is from 0.01 to \d+\.00/);
    await refuse({ cpusetCpus: '4095' }, /Requested CPUs are not available - requested 4095/);
    await refuse({ deviceReadBps: ['/etc/passwd:1mb'] }, /not a device node/);
    await refuse({ blkioWeight: '5' }, /--blkio-weight 5 is below the minimum 10/);
    if (!blkioWeightFile) await refuse({ blkioWeight: '300' }, /--blkio-weight needs .*BFQ/);
    assert.equal((await h.runner.ps({ all: true })).length, before);
    assert.equal(readFileSync('/proc/cgroups', 'utf8').includes('net_cls'), true);
  });
});
