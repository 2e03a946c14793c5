/**
 * The op table runner shared by every op test file (the model is llama.cpp's test-backend-ops): each case runs
 * on every backend the binary knows (cpu-scalar ... cpu-avx512bf16, cuda:N); an unavailable backend is skipped
 * with its reason, never passed. Every case checks that a CPU backend never ran a kernel tier above its own and
 * that a CUDA backend ran CUDA kernels, and reports the tier and error metric as a diagnostic.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { Backend, KernelTier } from '../../lib/index.js';
import { harnessBackends } from './backends.js';

export const TIER_ORDER: readonly KernelTier[] = ['scalar', 'avx2', 'avx512', 'avx512bf16'];

export interface CaseResult {
  tier: KernelTier;
  /** error metric and its tolerance, for the report */
  metric?: string;
}

export interface OpCase {
  op: string;
  name: string;
  /** Skipped on cpu-scalar (the slow reference tier); the vector tiers cover the shape. */
  heavy?: boolean;
  /** The op may legitimately run off the backend's compute kernels (a copy on CUDA reports no tier). */
  anyTier?: boolean;
  run(be: Backend): Promise<CaseResult>;
}

/** Registers one node:test suite per backend that runs every case. */
export function runCaseTable(suite: string, cases: readonly OpCase[]): void {
  for (const hb of harnessBackends()) {
    void test(`${suite} on ${hb.name}`, { skip: hb.available ? false : `${hb.name} unavailable: ${hb.reason}` }, async (t) => {
      const be = hb.open();
      for (const c of cases) {
        const skip = c.heavy && hb.name === 'cpu-scalar' ? 'heavy shape: covered by the vector tiers, scalar is the slow reference tier' : false;
        await t.test(`${c.name} [${hb.name}]`, { skip }, async (st) => {
          const r = await c.run(be);
          if (be.kind === 'cpu') {
            assert.ok(TIER_ORDER.indexOf(r.tier) <= TIER_ORDER.indexOf(be.isa), `ran tier ${r.tier} above the backend's ${be.isa}`);
          } else {
            assert.ok(c.anyTier || r.tier === 'cuda', `ran on ${r.tier}, expected cuda`);
          }
          st.diagnostic(`kernel ${r.tier}${r.metric ? `, ${r.metric}` : ''}`);
        });
      }
    });
  }
}
