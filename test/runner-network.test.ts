/*
 * The runner's network on real namespaces, veths, a bridge and iptables (needs root). Each run
 * uses its own bridge, subnet and root, and checks in `after` that nothing of it is left.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createNetwork, execInNetns, isolationChain, netnsCommand, netnsNameFor, NetworkError, parsePublish, publishPorts, shortId, type NetworkManager } from '../runner/network/index.js';
import { run } from '../runner/network/exec.js';
import { freePort } from '../builder/redis.js';

const newId = () => randomBytes(32).toString('hex');
const tag = randomBytes(3).toString('hex');
/** Ids attached in this file, to check that none of their devices or namespaces survive. */
const used = new Set<string>();
const children = new Set<ChildProcess>();

/** Starts a node program inside a namespace and waits until it prints "ready". */
async function startIn(netnsPath: string, code: string): Promise<ChildProcess> {
  const [cmd, args] = netnsCommand(netnsPath, [process.execPath, '-e', code]);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.on('exit', (c) => reject(new Error(`server in ${netnsPath} exited with ${c}`)));
  });
  return child;
}

/** A TCP server answering `reply` to each connection, and a UDP echo server on the same port. */
function serverCode(port: number, reply: string): string {
  return `const net = require('net'), dgram = require('dgram');
    const u = dgram.createSocket('udp4'); u.on('message', (m, r) => u.send('echo:' + m, r.port, r.address));
    u.bind(${port}, () => net.createServer((c) => c.end(${JSON.stringify(reply)})).listen(${port}, () => console.log('ready')));`;
}

/** Inside `netnsPath`, with `hostsPath` bind-mounted at /etc/hosts as the lifecycle does: resolves `name`, connects, reads. */
async function fetchByName(netnsPath: string, hostsPath: string, name: string, port: number): Promise<{ address: string; body: string }> {
  const code = `require('dns').lookup(${JSON.stringify(name)}, 4, (err, address) => {
    if (err) { console.log(JSON.stringify({ error: err.code })); return; }
    let body = ''; const s = require('net').connect(${port}, address);
    s.on('data', (d) => (body += d)).on('end', () => console.log(JSON.stringify({ address, body })));
    s.on('error', (e) => console.log(JSON.stringify({ address, error: e.code })));
  });`;
  const out = await execInNetns(netnsPath, ['unshare', '-m', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$1" -e "$2"', hostsPath, process.execPath, code]);
  return JSON.parse(out) as { address: string; body: string };
}

function readFrom(port: number, host = '127.0.0.1'): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = '';
    net.connect(port, host).on('data', (d) => (body += d)).on('end', () => resolve(body)).on('error', reject);
  });
}

/** Whether a TCP connection from inside `netnsPath` to host:port succeeds within a second. */
async function connectsFrom(netnsPath: string, host: string, port: number): Promise<boolean> {
  const code = `const s = require('net').connect(${port}, '${host}'); s.setTimeout(1000, () => { console.log('no'); process.exit(0); });
    s.on('connect', () => { console.log('yes'); process.exit(0); }).on('error', () => { console.log('no'); process.exit(0); });`;
  return (await execInNetns(netnsPath, [process.execPath, '-e', code])).trim() === 'yes';
}

/** A network of its own for this file: a fresh root, bridge and /24 (tried until one is free). */
async function freshNetwork(label: string): Promise<{ root: string; network: NetworkManager }> {
  const root = await mkdtemp(join(tmpdir(), `slipway-net-${label}-`));
  const routes = await run('ip', ['-4', 'route', 'show', 'table', 'all']);
  for (;;) {
    const subnet = `10.214.${randomInt(0, 256)}.0/24`;
    if (!routes.includes(subnet.replace('.0/24', '.'))) return { root, network: createNetwork(root, { bridge: `swt${label}${tag}`, subnet }) };
  }
}

describe('runner network', () => {
  let root: string;
  let network: NetworkManager;
  const web = newId();
  const client = newId();
  const webName = `web-${tag}`;

  before(async () => {
    ({ root, network } = await freshNetwork('a'));
  });

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const id of used) await network.detach(id);
    await network.remove();
    for (const id of used) {
      assert.equal(existsSync(`/var/run/netns/${netnsNameFor(id)}`), false, `netns of ${id} is gone`);
      assert.equal(existsSync(`/sys/class/net/sw${shortId(id)}`), false, `veth of ${id} is gone`);
    }
    assert.equal(existsSync(`/sys/class/net/${network.bridge}`), false, 'bridge is gone');
    assert.doesNotMatch(await run('iptables', ['-S']), new RegExp(network.bridge), 'iptables rules are gone');
    assert.equal(existsSync(join(root, 'network', 'endpoints.json')), false, 'IPAM state is gone');
    await rm(root, { recursive: true, force: true });
  });

  test('two containers reach each other by name', async () => {
    used.add(web).add(client);
    const a = await network.attach(web, { mode: 'bridge', name: webName });
    const b = await network.attach(client, { mode: 'bridge', name: `client-${tag}`, hostname: 'client' });
    assert.equal(a.gateway, network.gateway);
    assert.notEqual(a.ip, b.ip);
    assert.equal(a.netnsPath, `/var/run/netns/${netnsNameFor(web)}`);
    assert.equal(await readFile(b.hostnamePath, 'utf8'), 'client\n');
    assert.match(await readFile(b.resolvConfPath, 'utf8'), /^nameserver 127\.0\.0\.1$/m);
    assert.match(await readFile(a.hostsPath, 'utf8'), new RegExp(`^${b.ip}\\tclient client-${tag}$`, 'm'), 'the first container learnt of the second');
    await startIn(a.netnsPath, serverCode(7000, 'hi from web'));
    assert.deepEqual(await fetchByName(b.netnsPath, b.hostsPath, webName, 7000), { address: a.ip, body: 'hi from web' });
  });

  test('a published port answers through the host loopback; an automatic port is reported', async () => {
    const a = (await network.attachment(web))!;
    const fixed = await freePort();
    const published = await publishPorts([parsePublish(`127.0.0.1:${fixed}:7000`), parsePublish('127.0.0.1::7000'), parsePublish('127.0.0.1::7000/udp')], a.ip!);
    try {
      const [tcpFixed, tcpAuto, udpAuto] = published.mappings;
      assert.equal(tcpFixed!.hostPort, fixed);
      assert.ok(tcpAuto!.hostPort > 0 && tcpAuto!.hostPort !== fixed);
      assert.equal(await readFrom(fixed), 'hi from web');
      assert.equal(await readFrom(tcpAuto!.hostPort), 'hi from web');
      const sock = dgram.createSocket('udp4');
      const reply = new Promise<string>((resolve) => sock.once('message', (m) => resolve(m.toString())));
      sock.send('ping', udpAuto!.hostPort, '127.0.0.1');
      assert.equal(await reply, 'echo:ping');
      sock.close();
    } finally {
      await published.close();
    }
    await assert.rejects(readFrom(fixed), /ECONNREFUSED/, 'closed');
  });

  test('a port already in use: a clear error, and nothing left published', async () => {
    const a = (await network.attachment(web))!;
    const first = await freePort();
    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const busy = (blocker.address() as net.AddressInfo).port;
    await assert.rejects(publishPorts([parsePublish(`127.0.0.1:${first}:7000`), parsePublish(`127.0.0.1:${busy}:7000`)], a.ip!), (err: NetworkError) => {
      assert.equal(err.code, 'PORT_IN_USE');
      assert.match(err.message, new RegExp(`^port 127\\.0\\.0\\.1:${busy} is already in use`));
      return true;
    });
    blocker.close();
    await assert.rejects(publishPorts([parsePublish('198.51.100.7::7000')], a.ip!), (err: NetworkError) => err.code === 'ADDRESS_UNAVAILABLE' && /198\.51\.100\.7 is not an address of this host/.test(err.message));
    const again = net.createServer();
    await new Promise<void>((resolve) => again.listen(first, '127.0.0.1', resolve));
    again.close();
  });

  test('-p specs parse as docker reads them; bad ones are refused', () => {
    assert.deepEqual(parsePublish('8080:80'), { hostIp: '0.0.0.0', hostPort: 8080, containerPort: 80, protocol: 'tcp' });
    assert.deepEqual(parsePublish('80'), { hostIp: '0.0.0.0', hostPort: 0, containerPort: 80, protocol: 'tcp' });
    assert.deepEqual(parsePublish('127.0.0.1:53:53/udp'), { hostIp: '127.0.0.1', hostPort: 53, containerPort: 53, protocol: 'udp' });
    assert.deepEqual(parsePublish('[::1]::80'), { hostIp: '::1', hostPort: 0, containerPort: 80, protocol: 'tcp' });
    for (const bad of ['', 'http', '70000', '0', '80/sctp', '8000-8010:80-90', '1.2.3.4:5:6:7', 'localhost:80:80']) {
      assert.throws(() => parsePublish(bad), (err: NetworkError) => err.code === 'BAD_PUBLISH' && err.message.includes(`"${bad}"`), bad);
    }
  });

  test('detach takes the name out of the others\' hosts files, in place; detaching again is fine', async () => {
    const b = (await network.attachment(client))!;
    const before = await stat(b.hostsPath);
    assert.match(await readFile(b.hostsPath, 'utf8'), new RegExp(webName));
    for (const c of children) c.kill('SIGKILL');
    await network.detach(web);
    const text = await readFile(b.hostsPath, 'utf8');
    assert.doesNotMatch(text, new RegExp(webName));
    assert.match(text, new RegExp(`^${b.ip}\\tclient client-${tag}$`, 'm'), 'its own entry stays');
    assert.equal((await stat(b.hostsPath)).ino, before.ino, 'same inode, so a bind mount sees it');
    assert.equal(existsSync(`/var/run/netns/${netnsNameFor(web)}`), false);
    assert.equal(existsSync(`/sys/class/net/sw${shortId(web)}`), false);
    assert.equal(await network.attachment(web), undefined);
    await network.detach(web);
    await network.detach(newId());
  });

  test('--network none: loopback only, and its own hostname', async () => {
    const id = newId();
    used.add(id);
    const n = await network.attach(id, { mode: 'none', name: `lonely-${tag}`, hostname: 'lonely' });
    assert.equal(n.ip, undefined);
    const links = await execInNetns(n.netnsPath, ['ip', '-br', 'link']);
    assert.deepEqual(links.trim().split('\n').map((l) => l.split(/\s+/)[0]), ['lo']);
    assert.match(links, /UNKNOWN|UP/);
    const hosts = await readFile(n.hostsPath, 'utf8');
    assert.match(hosts, /^127\.0\.0\.1\tlocalhost$/m);
    assert.match(hosts, new RegExp(`^127\\.0\\.1\\.1\\tlonely lonely-${tag}$`, 'm'));
    assert.doesNotMatch(hosts, /client/, 'no peers');
  });

  test('traffic stays on this machine', async () => {
    const b = (await network.attachment(client))!;
    const routes = (await execInNetns(b.netnsPath, ['ip', '-4', 'route'])).trim().split('\n').map((l) => l.trim());
    const [net24] = network.subnet.split('/');
    assert.deepEqual(routes.sort(), [`${net24}/24 dev eth0 proto kernel scope link src ${b.ip}`, `default via ${network.gateway} dev eth0`].sort());
    const chain = isolationChain(network.bridge);
    const forward = (await run('iptables', ['-S', 'FORWARD'])).split('\n');
    assert.ok(forward.includes(`-A FORWARD -i ${network.bridge} -j ${chain}`) && forward.includes(`-A FORWARD -o ${network.bridge} -j ${chain}`));
    assert.equal((await run('iptables', ['-S', chain])).trim(), `-N ${chain}\n-A ${chain} -i ${network.bridge} -o ${network.bridge} -j ACCEPT\n-A ${chain} -j DROP`);
    const nat = await run('iptables', ['-t', 'nat', '-S']);
    assert.doesNotMatch(nat, new RegExp(`${network.bridge}|${net24}`), 'no NAT for the bridge');

    // An "outside" network of our own: a namespace behind another host interface, with a route back.
    const outside = `swt-out-${tag}`;
    const veth = `swto${tag}`;
    const o = 200 + randomInt(0, 50);
    try {
      await run('ip', ['netns', 'add', outside]);
      await run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', outside]);
      await run('ip', ['addr', 'add', `10.215.${o}.1/30`, 'dev', veth]);
      await run('ip', ['link', 'set', veth, 'up']);
      await run('ip', ['-n', outside, '-batch', '-'], `link set lo up\naddr add 10.215.${o}.2/30 dev eth0\nlink set eth0 up\nroute add default via 10.215.${o}.1\n`);
      const server = await startIn(outside, serverCode(7100, 'outside'));
      assert.equal(await readFrom(7100, `10.215.${o}.2`), 'outside', 'the host itself reaches it');
      assert.equal(await connectsFrom(b.netnsPath, `10.215.${o}.2`, 7100), false, 'a container does not');
      server.kill('SIGKILL');
    } finally {
      await run('ip', ['link', 'del', veth]).catch(() => {});
      await run('ip', ['netns', 'del', outside]).catch(() => {});
    }
  });
});

describe('runner network: addresses', () => {
  let root: string;
  let network: NetworkManager;
  const ids = Array.from({ length: 20 }, newId);
  const fromProcesses = Array.from({ length: 3 }, () => [newId(), newId(), newId()]);

  before(async () => {
    ({ root, network } = await freshNetwork('b'));
  });

  after(async () => {
    for (const id of [...ids, ...fromProcesses.flat()]) await network.detach(id);
    await network.remove();
    for (const id of [...ids, ...fromProcesses.flat()]) assert.equal(existsSync(`/var/run/netns/${netnsNameFor(id)}`), false);
    assert.equal(existsSync(`/sys/class/net/${network.bridge}`), false);
    await rm(root, { recursive: true, force: true });
  });

  test('20 attachments at once get 20 addresses; a freed one is reused', async () => {
    const started = Date.now();
    const all = await Promise.all(ids.slice(0, 19).map((id, i) => network.attach(id, { mode: 'bridge', name: `c${i}-${tag}` })));
    const ips = all.map((a) => a.ip!);
    assert.equal(new Set(ips).size, 19);
    const base = network.subnet.replace(/\.0\/24$/, '.');
    assert.deepEqual([...ips].sort((x, y) => Number(x.split('.')[3]) - Number(y.split('.')[3])), Array.from({ length: 19 }, (_, i) => `${base}${i + 2}`));
    const hosts = await readFile(all[0]!.hostsPath, 'utf8');
    assert.equal(hosts.split('\n').filter((l) => l.startsWith(base)).length, 19, 'every peer is in every hosts file');
    await network.detach(ids[4]!);
    const reused = await network.attach(ids[4]!, { mode: 'bridge', name: 'again' });
    assert.equal(reused.ip, ips[4]);
    console.log(`# 20 attaches + 1 detach in ${Date.now() - started} ms`);
  });

  test('the state survives a new NetworkManager (a restart of slipway)', async () => {
    const before = await network.endpoints();
    const restarted = createNetwork(root, { bridge: network.bridge, subnet: network.subnet });
    assert.deepEqual(await restarted.endpoints(), before);
    const a = await restarted.attach(ids[19]!, { mode: 'bridge' });
    assert.ok(!before.some((e) => e.ip === a.ip));
    assert.deepEqual(await restarted.attachment(ids[0]!), await network.attachment(ids[0]!));
    await assert.rejects(createNetwork(root, { bridge: network.bridge, subnet: '10.216.0.0/24' }).endpoints(), /STATE_MISMATCH|not .*10\.216/);
  });

  test('an entry whose namespace vanished is reclaimed, its address freed', async () => {
    const victim = (await network.attachment(ids[7]!))!;
    await run('ip', ['netns', 'del', netnsNameFor(ids[7]!)]);
    assert.deepEqual(await network.reclaim(), [ids[7]]);
    assert.equal(existsSync(`/sys/class/net/sw${shortId(ids[7]!)}`), false);
    const peer = (await network.attachment(ids[0]!))!;
    assert.doesNotMatch(await readFile(peer.hostsPath, 'utf8'), new RegExp(`c7-${tag}`));
    assert.equal((await network.attach(ids[7]!, { mode: 'bridge' })).ip, victim.ip);
  });

  test('slipway processes attaching at once share the state through the lock', async () => {
    const module = new URL('../runner/network/index.js', import.meta.url).href;
    const code = `const { createNetwork } = await import(process.argv[1]);
      const n = createNetwork(process.argv[2], { bridge: process.argv[3], subnet: process.argv[4] });
      const ips = await Promise.all(process.argv.slice(5).map((id) => n.attach(id, { mode: 'bridge' }).then((a) => a.ip)));
      console.log(JSON.stringify(ips));`;
    const outputs = await Promise.all(
      fromProcesses.map((batch) => run(process.execPath, ['--input-type=module', '-e', code, module, root, network.bridge, network.subnet, ...batch])),
    );
    const ips = outputs.flatMap((o) => JSON.parse(o) as string[]);
    const everyone = (await network.endpoints()).map((e) => e.ip);
    assert.equal(new Set(everyone).size, everyone.length, 'no address given twice');
    for (const ip of ips) assert.ok(everyone.includes(ip));
    assert.equal(everyone.length, 20 + 9);
  });

  test('a lock left by a dead process is taken over', async () => {
    const dead = spawnSync('true').pid;
    await writeFile(join(root, 'network', 'lock'), `${dead}\n`);
    const started = Date.now();
    assert.equal((await network.endpoints()).length, 29);
    assert.ok(Date.now() - started < 1000);
    assert.equal(existsSync(join(root, 'network', 'lock')), false);
  });

  test('a subnet that overlaps a route in use is refused, changing nothing', async () => {
    const other = await mkdtemp(join(tmpdir(), 'slipway-net-c-'));
    const clash = createNetwork(other, { bridge: `swtc${tag}`, subnet: network.subnet.replace(/\.0\/24$/, '.128/25') });
    const id = newId();
    await assert.rejects(clash.attach(id, { mode: 'bridge' }), (err: NetworkError) => err.code === 'SUBNET_CONFLICT' && /overlaps/.test(err.message));
    assert.equal(existsSync(`/sys/class/net/swtc${tag}`), false);
    assert.equal(existsSync(`/var/run/netns/${netnsNameFor(id)}`), false);
    assert.doesNotMatch(await run('iptables', ['-S']), new RegExp(`swtc${tag}`));
    await rm(other, { recursive: true, force: true });
  });
});
