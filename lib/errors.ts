/**
 * Typed errors. Every error this package throws is a {@link MoeOffloadError} with a stable `code`; native errors
 * arrive with the same codes and are re-thrown as these classes with the caller's stack.
 *
 * @example
 * try { backend.alloc('bf16', [-1]) } catch (e) {
 *   if (e instanceof InvalidArgumentError) console.error(e.code, e.message) // MOE_INVALID_ARGUMENT shape[0] must be ...
 * }
 */

export type ErrorCode =
  | 'MOE_INVALID_ARGUMENT'
  | 'MOE_BACKEND_UNAVAILABLE'
  | 'MOE_OUT_OF_MEMORY'
  | 'MOE_CUDA_ERROR'
  | 'MOE_DISPOSED'
  | 'MOE_NATIVE_BINDING'
  | 'MOE_UNSUPPORTED_MODEL'
  | 'MOE_CHECKPOINT_FORMAT'
  | 'MOE_INTERNAL';

/** Base class of every error thrown by moe-offload. */
export class MoeOffloadError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** An argument has the wrong type, dtype, shape, size or placement. The message names the argument. */
export class InvalidArgumentError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_INVALID_ARGUMENT', message, options);
  }
}

/** The requested backend (or CPU ISA tier) cannot run here; `message` says why (no driver, no device, ...). */
export class BackendUnavailableError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_BACKEND_UNAVAILABLE', message, options);
  }
}

/** Host, pinned, CUDA or CPU-pool memory could not be allocated. */
export class OutOfMemoryError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_OUT_OF_MEMORY', message, options);
  }
}

/** A CUDA runtime call failed; the message carries the CUDA error name. */
export class CudaError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_CUDA_ERROR', message, options);
  }
}

/** An object was used after `dispose()`. */
export class DisposedError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_DISPOSED', message, options);
  }
}

/** The native addon could not be loaded; the message lists what to do. */
export class NativeBindingError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_NATIVE_BINDING', message, options);
  }
}

/** A model architecture (config.json model_type) this package does not run; the message lists the supported ones. */
export class UnsupportedModelError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_UNSUPPORTED_MODEL', message, options);
  }
}

/**
 * A checkpoint file is malformed or incomplete (truncated file, bad header, overlapping offsets, unknown dtype,
 * shape that disagrees with its bytes, missing shard or tensor). `file` and `tensor` name the culprit.
 */
export class CheckpointFormatError extends MoeOffloadError {
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, tensor: string | undefined, message: string, options?: { cause?: unknown }) {
    super('MOE_CHECKPOINT_FORMAT', `${file}${tensor === undefined ? '' : ` [${tensor}]`}: ${message}`, options);
    this.file = file;
    this.tensor = tensor;
  }
}

/** A bug in moe-offload: please report it. */
export class InternalError extends MoeOffloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('MOE_INTERNAL', message, options);
  }
}

/** Native code used when an op was cancelled; callers see the AbortSignal's reason instead. */
export const CANCELLED_CODE = 'MOE_CANCELLED';

const byCode: Record<string, new (message: string, options?: { cause?: unknown }) => MoeOffloadError> = {
  MOE_INVALID_ARGUMENT: InvalidArgumentError,
  MOE_BACKEND_UNAVAILABLE: BackendUnavailableError,
  MOE_OUT_OF_MEMORY: OutOfMemoryError,
  MOE_CUDA_ERROR: CudaError,
  MOE_DISPOSED: DisposedError,
  MOE_INTERNAL: InternalError,
};

/**
 * Turns an error thrown by the addon into the typed class for its `code`, giving it `stack` (captured where the
 * caller entered the package) so the trace points at user code, not at the event loop.
 */
export function fromNative(err: unknown, stack?: string): unknown {
  if (!(err instanceof Error) || err instanceof MoeOffloadError) return err;
  const code = (err as { code?: unknown }).code;
  const Ctor = typeof code === 'string' ? byCode[code] : undefined;
  if (!Ctor) return err;
  const typed = new Ctor(err.message);
  if (stack) typed.stack = `${typed.name}: ${typed.message}\n${stack.split('\n').slice(1).join('\n')}`;
  return typed;
}
