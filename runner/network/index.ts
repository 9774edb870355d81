/** The runner's network part: bridge, namespaces, addresses, names and published ports. */
export { createNetwork, DEFAULT_BRIDGE, DEFAULT_SUBNET, netnsNameFor, shortId } from './manager.js';
export type { AttachOptions, NetworkManager, NetworkOptions } from './manager.js';
export type { Endpoint } from './state.js';
export { parsePublish, publishPorts } from './ports.js';
export type { PublishedPorts } from './ports.js';
export { execInNetns, netnsCommand } from './exec.js';
export { isolationChain } from './bridge.js';
export { NetworkError } from './errors.js';
export type { NetworkErrorCode } from './errors.js';
