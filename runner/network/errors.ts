/** What went wrong in the network part, as a code a caller can branch on; the message says what to do. */
export type NetworkErrorCode =
  | 'BAD_INPUT' // a container id, name or option that does not parse
  | 'BAD_PUBLISH' // a -p spec that does not parse
  | 'PORT_IN_USE'
  | 'ADDRESS_UNAVAILABLE' // a -p host IP that is not on this machine
  | 'SUBNET_EXHAUSTED'
  | 'SUBNET_CONFLICT' // the subnet or bridge is already used by something else
  | 'STATE_MISMATCH' // the state under the root was made with other options
  | 'LOCK_TIMEOUT'
  | 'TOOL_MISSING'
  | 'COMMAND_FAILED';

export class NetworkError extends Error {
  override readonly name = 'NetworkError';
  constructor(
    readonly code: NetworkErrorCode,
    message: string,
  ) {
    super(message);
  }
}
