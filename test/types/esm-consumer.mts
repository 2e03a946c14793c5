// Type-checked by test/package.test.ts: an ESM program importing the package by name sees the typed API.
import moe, { type DType, HostTensor, InvalidArgumentError, type KernelTier, info, openBackend } from 'moe-offload';

const be = openBackend({ backend: 'cpu', isa: 'avx2' });
const t: HostTensor<'bf16'> = HostTensor.from('bf16', [2], [1, 2]);
const bits: Uint16Array = t.data;
const d: DType = t.dtype;
const tier: Promise<KernelTier> = be.add(t, t, t);
const version: string = info().version;
const err = new InvalidArgumentError('x');
const code: 'MOE_INVALID_ARGUMENT' | string = err.code;
const viaDefault: typeof openBackend = moe.openBackend;
// @ts-expect-error: isa is a closed set
openBackend({ isa: 'sse2' });
export { bits, d, tier, version, code, viaDefault };
