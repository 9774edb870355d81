/*
 * The Slipway bridge: a Linux bridge holding the gateway address of Slipway's subnet, with
 * iptables rules that keep its traffic on this machine. Containers reach each other across the
 * bridge and reach the host itself (the gateway address, published ports); nothing is forwarded
 * from the bridge to another interface or from another interface into it, whatever
 * net.ipv4.ip_forward says, and no NAT rule is ever added.
 */
import { readdir, writeFile } from 'node:fs/promises';
import { NetworkError } from './errors.js';
import { linkExists, run } from './exec.js';
import { gatewayOf, ipToInt, macFor, overlaps, type Subnet } from './subnet.js';

/** The filter chain holding a bridge's isolation rules; FORWARD jumps to it for the bridge's traffic. */
export function isolationChain(bridge: string): string {
  return `SLIPWAY-${bridge}`;
}

/** Creates the bridge and its isolation rules if missing; checks an existing one is ours. */
export async function ensureBridge(bridge: string, subnet: Subnet): Promise<void> {
  const gateway = gatewayOf(subnet);
  const exists = linkExists(bridge);
  // Checked before anything is changed, so a bad subnet or bridge name leaves nothing behind.
  if (exists) await checkBridgeAddress(bridge, gateway, subnet);
  else await checkNoOverlap(subnet);
  // Rules before the bridge: a container must never be on it while forwarding is unrestricted.
  await ensureIsolation(bridge);
  if (exists) return;
  try {
    await run('ip', ['link', 'add', 'name', bridge, 'type', 'bridge']);
  } catch (err) {
    if (!linkExists(bridge)) throw err; // another slipway process made it just now
    await checkBridgeAddress(bridge, gateway, subnet);
    return;
  }
  // A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, which changes as they come and go.
  await run('ip', ['link', 'set', bridge, 'address', macFor(gateway)]);
  await run('ip', ['addr', 'add', `${gateway}/${subnet.prefix}`, 'dev', bridge]);
  // No IPv6 on the bridge: the host then neither routes nor answers IPv6 for containers.
  await writeFile(`/proc/sys/net/ipv6/conf/${bridge}/disable_ipv6`, '1').catch(() => {});
  await run('ip', ['link', 'set', bridge, 'up']);
}

/** Deletes the bridge and its isolation rules; a bridge already gone is not an error. */
export async function removeBridge(bridge: string): Promise<void> {
  // Ports left mean containers of another Slipway root on the same bridge: not ours to cut off.
  const ports = await readdir(`/sys/class/net/${bridge}/brif`).catch(() => []);
  if (ports.length > 0) throw new NetworkError('BAD_INPUT', `bridge ${bridge} still has ports (${ports.join(', ')}); detach their containers first`);
  if (linkExists(bridge)) await run('ip', ['link', 'del', bridge]);
  const chain = isolationChain(bridge);
  for (const dir of ['-i', '-o']) {
    while (await iptablesOk(['-C', 'FORWARD', dir, bridge, '-j', chain])) {
      await iptables(['-D', 'FORWARD', dir, bridge, '-j', chain]);
    }
  }
  if (await iptablesOk(['-S', chain])) {
    await iptables(['-F', chain]);
    await iptables(['-X', chain]);
  }
}

async function ensureIsolation(bridge: string): Promise<void> {
  const chain = isolationChain(bridge);
  // Bridge to bridge (container to container, seen by iptables when br_netfilter is loaded):
  // allowed. Anything else forwarded from or to the bridge: dropped.
  const rules = [
    ['-i', bridge, '-o', bridge, '-j', 'ACCEPT'],
    ['-j', 'DROP'],
  ];
  const want = rules.map((r) => `-A ${chain} ${r.join(' ')}`);
  if (!(await iptablesOk(['-S', chain]))) await iptables(['-N', chain]).catch(() => {});
  const have = (await iptables(['-S', chain])).split('\n').filter((l) => l.startsWith('-A '));
  if (have.join('\n') !== want.join('\n')) {
    // Put the right rules on top first, then drop whatever followed: never unguarded.
    for (const rule of [...rules].reverse()) await iptables(['-I', chain, '1', ...rule]);
    while (await iptablesOk(['-D', chain, String(rules.length + 1)]));
  }
  await jumpFirst(bridge, chain);
}

/** Makes FORWARD jump to `chain` for traffic in or out of the bridge, ahead of any other rule. */
async function jumpFirst(bridge: string, chain: string): Promise<void> {
  for (const dir of ['-i', '-o']) {
    if (!(await iptablesOk(['-C', 'FORWARD', dir, bridge, '-j', chain]))) {
      await iptables(['-I', 'FORWARD', '1', dir, bridge, '-j', chain]);
    }
  }
}

function iptables(args: string[]): Promise<string> {
  return run('iptables', ['-w', '5', ...args]);
}

async function iptablesOk(args: string[]): Promise<boolean> {
  try {
    await iptables(args);
    return true;
  } catch (err) {
    if (err instanceof NetworkError && err.code === 'TOOL_MISSING') {
      throw new NetworkError('TOOL_MISSING', `${err.message}; Slipway needs it to keep bridge traffic on this machine`);
    }
    return false;
  }
}

async function checkBridgeAddress(bridge: string, gateway: string, subnet: Subnet): Promise<void> {
  const links = JSON.parse(await run('ip', ['-j', 'addr', 'show', 'dev', bridge])) as {
    link_type?: string;
    addr_info?: { family: string; local: string; prefixlen: number }[];
  }[];
  const v4 = (links[0]?.addr_info ?? []).filter((a) => a.family === 'inet');
  if (v4.some((a) => a.local === gateway && a.prefixlen === subnet.prefix)) return;
  if (v4.length === 0) {
    await run('ip', ['addr', 'add', `${gateway}/${subnet.prefix}`, 'dev', bridge]);
    await run('ip', ['link', 'set', bridge, 'up']);
    return;
  }
  const has = v4.map((a) => `${a.local}/${a.prefixlen}`).join(', ');
  throw new NetworkError('SUBNET_CONFLICT', `device ${bridge} already exists with address ${has}, not ${gateway}/${subnet.prefix}; choose another bridge name or subnet`);
}

/** Refuses a subnet that another interface already routes: containers would shadow real hosts. */
async function checkNoOverlap(subnet: Subnet): Promise<void> {
  const routes = JSON.parse(await run('ip', ['-j', '-4', 'route', 'show', 'table', 'all'])) as { dst: string; dev?: string; type?: string }[];
  for (const r of routes) {
    if (!r.dev || r.dst === 'default' || (r.type && r.type !== 'unicast')) continue;
    const dst = r.dst.includes('/') ? r.dst : `${r.dst}/32`;
    if (!/^[\d.]+\/\d+$/.test(dst)) continue;
    if (overlaps(subnet, parseSubnetLoose(dst))) {
      throw new NetworkError('SUBNET_CONFLICT', `subnet ${subnet.cidr} overlaps ${r.dst} on ${r.dev}; choose another subnet for Slipway's bridge`);
    }
  }
}

/** parseSubnet accepts /8–/30 only; routes can be any length. */
function parseSubnetLoose(cidr: string): Subnet {
  const [ip, len] = cidr.split('/');
  const prefix = Number(len);
  const size = 2 ** (32 - prefix);
  const n = ipToInt(ip ?? '');
  return { cidr, base: n - (n % size), prefix, size };
}
