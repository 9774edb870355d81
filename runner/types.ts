/*
 * The contracts between the runner's parts: pulling and unpacking images
 * (image store), the network, and the container lifecycle. Each part owns its
 * files; they meet only through these types and runner/index.ts.
 */

/** The part of an image config the runner reads (OCI image-spec `config`). */
export interface ImageRunConfig {
  User?: string;
  ExposedPorts?: Record<string, object>;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Volumes?: Record<string, object>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  /** Docker's extension; absent in plain OCI configs. */
  Healthcheck?: { Test?: string[]; Interval?: number; Timeout?: number; StartPeriod?: number; Retries?: number };
}

/** An image pulled and unpacked on this node. */
export interface LocalImage {
  /** The reference it was pulled by, normalised (`host:port/repo:tag` or `…@sha256:…`). */
  reference: string;
  /** Digest of the image manifest (the linux/amd64 one when pulled through an index). */
  manifestDigest: string;
  /** Digest of the config blob: the image id, as docker reports it. */
  id: string;
  architecture: string;
  os: string;
  config: ImageRunConfig;
  /** Unpacked layer directories, bottom to top; the lower dirs of the overlay. */
  layerDirs: string[];
  /** Sum of the compressed layer sizes. */
  size: number;
  created?: string;
}

/** What a container's network looks like once attached. */
export interface NetworkAttachment {
  /** `none` (loopback only) or the Slipway bridge network. */
  mode: 'none' | 'bridge';
  /** Path of the network namespace to put in the runtime spec (`/var/run/netns/…`). */
  netnsPath: string;
  ip?: string;
  gateway?: string;
  /** Files to bind-mount at /etc/hosts, /etc/resolv.conf and /etc/hostname. */
  hostsPath: string;
  resolvConfPath: string;
  hostnamePath: string;
}

export interface PortMapping {
  hostIp: string;
  hostPort: number;
  containerPort: number;
  protocol: 'tcp' | 'udp';
}
