// CPU attention is invariant to how a sequence's queries are split into calls: a prompt prefilled in one call or in
// several (prefill chunks, possibly batched with other sequences) gives every query row bitwise the same output, on
// every CPU tier. Batched generation relies on it (a request's tokens must not depend on its batch). Block 16 runs
// the bf16 tier's several-pages-per-chunk path (chunks aligned to 4 pages), with and without a sliding window.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HostTensor, KvCache } from '../lib/index.js';
import { harnessBackends } from './harness/backends.js';

const cpuBackends = harnessBackends().filter((hb) => hb.name.startsWith('cpu-'));

function values(n: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  });
}

for (const hb of cpuBackends) {
  const skip = hb.available ? false : hb.reason ?? 'unavailable';
  for (const [qHeads, kvHeads, hd, blockSize, slidingWindow] of [
    [4, 2, 128, 64, 0],
    [8, 1, 64, 64, 0],
    [4, 2, 128, 16, 0],
    [8, 1, 64, 16, 37],
  ] as const) {
    const what = `${qHeads}:${kvHeads} heads of ${hd}, block ${blockSize}${slidingWindow ? `, window ${slidingWindow}` : ''}`;
    void test(`attention: rows do not depend on how the queries are split into calls (${what}) on ${hb.name}`, { skip }, async () => {
      const be = hb.open();
      const L = 93;
      const kv = KvCache.create(be, { layers: 1, kvHeads, headDim: hd, blockSize, budgetBytes: 4 * 64 * kvHeads * hd * 2 * 2 });
      const k = HostTensor.from('f32', [L, kvHeads, hd], values(L * kvHeads * hd, 1));
      const v = HostTensor.from('f32', [L, kvHeads, hd], values(L * kvHeads * hd, 2));
      // large scores (as after q/k norms in real models), so a last-bit change in a score reaches the bf16 output
      const q = HostTensor.from('bf16', [L, qHeads, hd], values(L * qHeads * hd, 3).map((x) => 8 * x));
      // whole: one sequence, all L queries at once
      const whole = kv.allocate();
      await kv.write(0, whole, kv.append(whole, L), k, v);
      const want = new HostTensor('f32', [L, qHeads, hd]); // f32 out: a last-bit difference anywhere shows
      await be.attention({ q, k: kv.keys(0), v: kv.values(0), out: want, slidingWindow, ...kv.batch([whole], [L]) });
      kv.free(whole);
      for (const cuts of [[43], [16, 17, 64], [1, 92], [63, 65]]) {
        const s = kv.allocate();
        const got = new HostTensor('f32', [L, qHeads, hd]);
        let prev = 0;
        for (const c of [...cuts, L]) {
          const n = c - prev;
          await kv.write(0, s, kv.append(s, n), k.rows(prev, n), v.rows(prev, n));
          await be.attention({ q: q.rows(prev, n), k: kv.keys(0), v: kv.values(0), out: got.rows(prev, n), slidingWindow, ...kv.batch([s], [n]) });
          prev = c;
        }
        kv.free(s);
        let diff = 0;
        for (let i = 0; i < want.numel; i++) if (got.data[i] !== want.data[i]) diff++;
        assert.equal(diff, 0, `cuts ${cuts.join(', ')}: ${diff} of ${want.numel} output elements differ from one call`);
      }
      kv.dispose();
    });
  }
}

// With a split count that depends on the sequence alone (numSplits; or splitTokens, as the model runtime passes), a
// sequence's rows are the same bits alone (few items: the splits run as items of their own, merged in a second pass)
// and in a batch of 64 (enough items: each item runs its splits one after the other and merges them itself), for
// decode and for an extend of 9 tokens (one query tile: alone, 2 items, too few for a pool of 2 threads or more;
// batched, 128, enough for up to 64); and the batch on one thread (threads: 1) the same bits as on the whole pool.
for (const hb of cpuBackends) {
  const skip = hb.available ? false : hb.reason ?? 'unavailable';
  for (const [blockSize, qLen, splits] of [
    [16, 1, { numSplits: 4 }],
    [64, 1, { numSplits: 4 }],
    [16, 9, { numSplits: 4 }],
    [16, 1, { splitTokens: 64 }],
    [64, 9, { splitTokens: 100 }],
  ] as const) {
    const how = 'numSplits' in splits ? `numSplits ${splits.numSplits}` : `splitTokens ${splits.splitTokens}`;
    void test(`attention: ${how} rows do not depend on the batch (block ${blockSize}, q ${qLen}) on ${hb.name}`, { skip }, async () => {
      const be = hb.open();
      const [qHeads, kvHeads, hd, L, others] = [8, 2, 128, 300, 63];
      const pagesPerSeq = Math.ceil(L / blockSize);
      const kv = KvCache.create(be, { layers: 1, kvHeads, headDim: hd, blockSize, budgetBytes: (others + 1) * pagesPerSeq * blockSize * kvHeads * hd * 2 * 2 });
      const seqs: number[] = [];
      for (let i = 0; i <= others; i++) {
        const s = kv.allocate();
        const k = HostTensor.from('f32', [L, kvHeads, hd], values(L * kvHeads * hd, 10 + 2 * i));
        const v = HostTensor.from('f32', [L, kvHeads, hd], values(L * kvHeads * hd, 11 + 2 * i));
        await kv.write(0, s, kv.append(s, L), k, v);
        seqs.push(s);
      }
      const q = HostTensor.from('bf16', [(others + 1) * qLen, qHeads, hd], values((others + 1) * qLen * qHeads * hd, 7).map((x) => 8 * x));
      const alone = new HostTensor('f32', [qLen, qHeads, hd]);
      await be.attention({ q: q.rows(0, qLen), k: kv.keys(0), v: kv.values(0), out: alone, ...splits, ...kv.batch([seqs[0]!], [qLen]) });
      const batched = new HostTensor('f32', [(others + 1) * qLen, qHeads, hd]);
      await be.attention({ q, k: kv.keys(0), v: kv.values(0), out: batched, ...splits, ...kv.batch(seqs, seqs.map(() => qLen)) });
      let diff = 0;
      for (let i = 0; i < alone.numel; i++) if (batched.data[i] !== alone.data[i]) diff++;
      assert.equal(diff, 0, `${diff} of ${alone.numel} output elements of sequence 0 differ between alone and in a batch of ${others + 1}`);
      // on one of the pool's threads (AttentionParams.threads, as a CUDA host runs it beside expert copies): the same bits
      const one = new HostTensor('f32', [(others + 1) * qLen, qHeads, hd]);
      await be.attention({ q, k: kv.keys(0), v: kv.values(0), out: one, ...splits, ...kv.batch(seqs, seqs.map(() => qLen)), threads: 1 });
      diff = 0;
      for (let i = 0; i < one.numel; i++) if (one.data[i] !== batched.data[i]) diff++;
      assert.equal(diff, 0, `${diff} of ${one.numel} output elements differ between the whole pool and threads: 1`);
      kv.dispose();
    });
  }
}
