/**
 * The backends the op harness runs every case on: cpu-scalar, cpu-avx2, cpu-avx512, cpu-avx512bf16 and each
 * CUDA device. Unavailable ones are reported as skipped with their reason, never as passed.
 */
import { type Backend, type HostTensor, type Tensor, listBackends, openBackend } from '../../lib/index.js';

export interface HarnessBackend {
  name: string;
  available: boolean;
  reason?: string;
  open(): Backend;
}

export function harnessBackends(): HarnessBackend[] {
  return listBackends().map((b) => ({
    name: b.name,
    available: b.available,
    ...(b.reason === undefined ? {} : { reason: b.reason }),
    open: () => (b.kind === 'cpu' ? openBackend({ backend: 'cpu', isa: b.isa! }) : openBackend({ backend: 'cuda', device: b.device ?? 0 })),
  }));
}

/**
 * Runs `fn` with inputs and outputs placed where `be` computes: host tensors as they are on CPU backends;
 * uploaded to device memory (and outputs downloaded back into the given host tensors) on CUDA.
 */
export async function onBackend<R>(
  be: Backend,
  inputs: HostTensor[],
  outputs: HostTensor[],
  fn: (ins: Tensor[], outs: Tensor[]) => Promise<R>,
): Promise<R> {
  if (be.kind === 'cpu') return fn(inputs, outputs);
  const ins = await Promise.all(inputs.map((t) => be.upload(t)));
  const outs = outputs.map((t) => be.alloc(t.dtype, t.shape));
  try {
    const r = await fn(ins, outs);
    for (let i = 0; i < outs.length; i++) await be.copy(outs[i]!, outputs[i]!);
    return r;
  } finally {
    for (const t of [...ins, ...outs]) t.dispose();
  }
}

/**
 * Places host tensors where `be` computes and remembers what it allocated: `put` returns a host tensor as it is on
 * CPU backends and an uploaded copy on CUDA; `dispose` frees the copies.
 */
export function placer(be: Backend): { put(t: HostTensor): Promise<Tensor>; dispose(): void } {
  const owned: Array<{ dispose(): void }> = [];
  return {
    async put(t: HostTensor): Promise<Tensor> {
      if (be.kind === 'cpu') return t;
      const d = await be.upload(t);
      owned.push(d);
      return d;
    },
    dispose(): void {
      for (const d of owned.splice(0)) d.dispose();
    },
  };
}
