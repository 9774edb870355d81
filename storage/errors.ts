/**
 * Domain errors of the store. The registry maps each kind to an OCI error code
 * at its edge; other callers read `kind` and the message.
 */
export type StoreErrorKind =
  | 'blob-unknown'
  | 'upload-unknown'
  | 'upload-busy'
  | 'digest-mismatch'
  | 'size-mismatch'
  | 'range-mismatch'
  | 'manifest-unknown'
  | 'tag-unknown'
  | 'repository-unknown';

export class StoreError extends Error {
  constructor(
    readonly kind: StoreErrorKind,
    message: string,
    readonly detail?: Record<string, unknown>,
  ) {
    super(message);
  }
}

export const isStoreError = (err: unknown, kind?: StoreErrorKind): err is StoreError =>
  err instanceof StoreError && (kind === undefined || err.kind === kind);
