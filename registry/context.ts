import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Store } from '../storage/index.js';

export interface RegistryOptions {
  /** DELETE of blobs and manifests; on by default, as the OCI spec's conformance expects. */
  deleteEnabled: boolean;
  /** Send clients a storage URL (307) for blob GETs where the driver has one. */
  redirect: boolean;
}

/** What every handler gets: the store, the options, and the parsed path. */
export interface RouteContext {
  store: Store;
  options: RegistryOptions;
  /** Repository name, validated. */
  name: string;
  /** The path parameter after the name (digest, reference or upload id). */
  param: string;
  /** The request's query string. */
  query: URLSearchParams;
  /** Reports what the request did (notifications, byte counters); call once the response is decided. */
  events: RequestEvents;
}

/** What a handler knows of the object it acted on; the rest (repository, url, request) is filled in. */
export interface EventSubject {
  mediaType: string;
  digest: string;
  size: number;
  tag?: string;
  /** Bytes this request moved (a blob GET's body, an upload's blob); counted in /metrics. */
  transferred?: number;
}

export interface RequestEvents {
  emit(action: 'push' | 'pull' | 'delete', subject: EventSubject): void;
}

export type Request = IncomingMessage;
export type Response = ServerResponse;
export type Handler = (ctx: RouteContext, req: Request, res: Response) => Promise<void>;
