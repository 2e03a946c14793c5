/**
 * Routing traces: what the model runtime records and the simulator replays. Per request: a semantic embedding and,
 * per decode iteration and MoE layer, the top-k expert ids (in rank order) with their gate probabilities, and
 * optionally the full gate probability vector (FineMoE's expert maps use it).
 *
 * Binary format (chosen over JSONL: an OLMoE iteration is 16 x 8 ids + probabilities, and JSON would be ~5x
 * larger and slow to parse). Little-endian:
 *   header (24 bytes): "MOET" | u16 version=1 | u16 flags (bit 0: full gate vectors) | u16 layers | u16 experts |
 *                      u16 topK | u16 embedDim | u32 requests | u32 reserved=0
 *   per request: i32 domain (-1 unknown) | u32 iterations | f32[embedDim] embedding |
 *                u16[iterations * layers * topK] ids (+ 2 pad bytes if the count is odd) |
 *                f32[iterations * layers * topK] probabilities | (flag 0) f32[iterations * layers * experts] gates
 *
 * The generator is calibrated on REAL routing counts (../shared/data/routing-olmoe: per-domain expert counts at
 * measured layers 0, 7, 15 and rank-aligned cross-layer transitions 0->7, 7->15). How:
 *  - each request has a latent domain; its embedding is the domain's random unit centroid plus Gaussian noise
 *    (`embedNoise` = expected noise norm relative to the centroid), so embeddings reflect the domain noisily;
 *  - at the measured (anchor) layers, rank r's expert follows a Markov chain on the real data: layer-0 expert
 *    ~ the domain's layer-0 popularity, next anchor ~ the row of the domain's rank-aligned transition matrix for
 *    the previous anchor's expert; a rank that collides with an expert already chosen in the layer is redrawn
 *    from the same row without the taken experts;
 *  - anchors are placed at the same relative depth in the target model (layer a of a source with S layers goes to
 *    round(a * (L - 1) / (S - 1)); same layers when L = S);
 *  - a layer between two anchors is not measured; it copies, per token and rank, the expert of the lower anchor
 *    with probability 1 - lambda or of the upper anchor with probability lambda (lambda = relative position
 *    between them), through a fixed random permutation of expert ids for that layer (expert numbering is
 *    arbitrary per layer), and with probability `copyNoise` redraws from the permuted interpolated popularity.
 *    Layers past the last anchor copy the last anchor. So unmeasured layers keep the measured skew, and
 *    neighbouring layers are more correlated than distant ones; the strength of that correlation (copyNoise) is
 *    an assumption: no public per-token data measures it;
 *  - a shape with fewer experts than the source keeps experts 0..E-1 and renormalises; top-k can differ;
 *  - gate probabilities: the k selected experts share a mass m ~ U(0.5, 0.85) in ratios 0.75^rank; the rest is
 *    spread over the other experts in proportion to the layer's popularity;
 *  - iterations of a request are independent draws from its domain (no temporal token-to-token correlation:
 *    none is in the data).
 */
import { InvalidArgumentError } from '../errors.js';
import { Rng, checkInt, checkNumber } from './types.js';

/** One request of a trace. Arrays are [iterations, layers, topK] (ids, probs) and [iterations, layers, experts]. */
export interface TraceRequest {
  domain: number;
  iterations: number;
  embedding: Float32Array;
  ids: Uint16Array;
  probs: Float32Array;
  gates?: Float32Array;
}

/** A routing trace for one model shape. */
export interface RoutingTrace {
  numLayers: number;
  numExperts: number;
  topK: number;
  embedDim: number;
  requests: TraceRequest[];
}

const MAGIC = 0x54454f4d; // "MOET" little-endian

function checkTrace(t: RoutingTrace): void {
  checkInt('trace.numLayers', t.numLayers, 1, 65535);
  checkInt('trace.numExperts', t.numExperts, 1, 65535);
  checkInt('trace.topK', t.topK, 1, t.numExperts);
  checkInt('trace.embedDim', t.embedDim, 1, 65535);
  if (!Array.isArray(t.requests)) throw new InvalidArgumentError('trace.requests must be an array');
  const { numLayers: L, topK: k, numExperts: E, embedDim: D } = t;
  t.requests.forEach((r, i) => {
    const n = checkInt(`trace.requests[${i}].iterations`, r.iterations, 0) * L;
    if (!(r.embedding instanceof Float32Array) || r.embedding.length !== D) throw new InvalidArgumentError(`trace.requests[${i}].embedding must be a Float32Array of length ${D}`);
    if (!(r.ids instanceof Uint16Array) || r.ids.length !== n * k) throw new InvalidArgumentError(`trace.requests[${i}].ids must be a Uint16Array of length ${n * k}, received ${r.ids?.length}`);
    if (!(r.probs instanceof Float32Array) || r.probs.length !== n * k) throw new InvalidArgumentError(`trace.requests[${i}].probs must be a Float32Array of length ${n * k}`);
    if (r.gates !== undefined && (!(r.gates instanceof Float32Array) || r.gates.length !== n * E)) throw new InvalidArgumentError(`trace.requests[${i}].gates must be a Float32Array of length ${n * E}`);
    for (let j = 0; j < r.ids.length; j++) if (r.ids[j]! >= E) throw new InvalidArgumentError(`trace.requests[${i}].ids[${j}] must be < ${E}, received ${r.ids[j]}`);
  });
}

/** Serialises a trace to the binary format described in the file header. */
export function serializeTrace(trace: RoutingTrace): Uint8Array {
  checkTrace(trace);
  const { numLayers: L, numExperts: E, topK: k, embedDim: D } = trace;
  const full = trace.requests.length > 0 && trace.requests.every((r) => r.gates !== undefined);
  let size = 24;
  for (const r of trace.requests) {
    const n = r.iterations * L * k;
    size += 8 + 4 * D + 2 * n + (n % 2 ? 2 : 0) + 4 * n + (full ? 4 * r.iterations * L * E : 0);
  }
  const buf = new Uint8Array(size);
  const dv = new DataView(buf.buffer);
  dv.setUint32(0, MAGIC, true);
  dv.setUint16(4, 1, true);
  dv.setUint16(6, full ? 1 : 0, true);
  dv.setUint16(8, L, true);
  dv.setUint16(10, E, true);
  dv.setUint16(12, k, true);
  dv.setUint16(14, D, true);
  dv.setUint32(16, trace.requests.length, true);
  let o = 24;
  for (const r of trace.requests) {
    dv.setInt32(o, r.domain, true);
    dv.setUint32(o + 4, r.iterations, true);
    o += 8;
    for (let i = 0; i < D; i++, o += 4) dv.setFloat32(o, r.embedding[i]!, true);
    for (let i = 0; i < r.ids.length; i++, o += 2) dv.setUint16(o, r.ids[i]!, true);
    if (r.ids.length % 2) o += 2;
    for (let i = 0; i < r.probs.length; i++, o += 4) dv.setFloat32(o, r.probs[i]!, true);
    if (full) for (let i = 0; i < r.gates!.length; i++, o += 4) dv.setFloat32(o, r.gates![i]!, true);
  }
  return buf;
}

/** Parses the binary format; throws InvalidArgumentError naming what is wrong on a malformed buffer. */
export function parseTrace(bytes: Uint8Array): RoutingTrace {
  if (!(bytes instanceof Uint8Array)) throw new InvalidArgumentError(`bytes must be a Uint8Array, received ${typeof bytes}`);
  if (bytes.length < 24) throw new InvalidArgumentError(`bytes must hold at least a 24-byte trace header, received ${bytes.length} bytes`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(0, true) !== MAGIC) throw new InvalidArgumentError('bytes must start with the trace magic "MOET"');
  const version = dv.getUint16(4, true);
  if (version !== 1) throw new InvalidArgumentError(`trace version must be 1, received ${version}`);
  const full = (dv.getUint16(6, true) & 1) === 1;
  const L = dv.getUint16(8, true);
  const E = dv.getUint16(10, true);
  const k = dv.getUint16(12, true);
  const D = dv.getUint16(14, true);
  const R = dv.getUint32(16, true);
  const requests: TraceRequest[] = [];
  let o = 24;
  const need = (n: number) => {
    if (o + n > bytes.length) throw new InvalidArgumentError(`bytes is truncated: request ${requests.length} needs ${o + n} bytes, received ${bytes.length}`);
  };
  for (let r = 0; r < R; r++) {
    need(8);
    const domain = dv.getInt32(o, true);
    const iterations = dv.getUint32(o + 4, true);
    o += 8;
    const n = iterations * L * k;
    need(4 * D + 2 * n + (n % 2 ? 2 : 0) + 4 * n + (full ? 4 * iterations * L * E : 0));
    const embedding = new Float32Array(D);
    for (let i = 0; i < D; i++, o += 4) embedding[i] = dv.getFloat32(o, true);
    const ids = new Uint16Array(n);
    for (let i = 0; i < n; i++, o += 2) ids[i] = dv.getUint16(o, true);
    if (n % 2) o += 2;
    const probs = new Float32Array(n);
    for (let i = 0; i < n; i++, o += 4) probs[i] = dv.getFloat32(o, true);
    const req: TraceRequest = { domain, iterations, embedding, ids, probs };
    if (full) {
      const g = new Float32Array(iterations * L * E);
      for (let i = 0; i < g.length; i++, o += 4) g[i] = dv.getFloat32(o, true);
      req.gates = g;
    }
    requests.push(req);
  }
  const t: RoutingTrace = { numLayers: L, numExperts: E, topK: k, embedDim: D, requests };
  checkTrace(t);
  return t;
}

/** Real routing statistics of one model, as loaded from routing-olmoe. */
export interface RoutingStats {
  model: string;
  numExperts: number;
  topK: number;
  /** Layers of the source model. */
  sourceLayers: number;
  domains: string[];
  /** Measured layers, ascending (e.g. [0, 7, 15]). */
  anchors: number[];
  /** [domain][anchor] -> counts per expert. */
  counts: Float64Array[][];
  /** [domain][anchor i -> i+1] -> rank-aligned pair counts [E * E], row = earlier expert. */
  transitions: Float64Array[][];
}

/**
 * Builds RoutingStats from the parsed JSON of expert_counts.json and expert_counts_crosslayer.json for `modelKey`
 * ('mistral' or 'olmoe'). Only domains present in both files are kept. `sourceLayers` is the source model's
 * layer count (32 for Mixtral-8x7B, 16 for OLMoE).
 */
export function routingStatsFromJson(countsJson: unknown, crossJson: unknown, modelKey: string, sourceLayers: number): RoutingStats {
  type CountsEntry = { model: string; num_experts: number; top_k: number; counts: Record<string, Record<string, number[]>> };
  type CrossEntry = { rank_aligned_pairs: Record<string, Record<string, number[][]>> };
  const c = (countsJson as Record<string, CountsEntry>)?.[modelKey];
  const x = (crossJson as Record<string, CrossEntry>)?.[modelKey];
  if (!c || !x) throw new InvalidArgumentError(`modelKey must name a model in both routing files, received ${JSON.stringify(modelKey)}`);
  const E = checkInt(`${modelKey}.num_experts`, c.num_experts, 1);
  const domains = Object.keys(x.rank_aligned_pairs).filter((d) => c.counts[d] !== undefined).sort();
  const anchors = Object.keys(c.counts[domains[0]!]!).map(Number).sort((a, b) => a - b);
  checkInt('sourceLayers', sourceLayers, anchors[anchors.length - 1]! + 1);
  const counts = domains.map((d) => anchors.map((a) => Float64Array.from(c.counts[d]![String(a)]!)));
  const transitions = domains.map((d) =>
    anchors.slice(0, -1).map((a, i) => {
      const m = x.rank_aligned_pairs[d]![`${a}->${anchors[i + 1]}`];
      if (!m || m.length !== E) throw new InvalidArgumentError(`${modelKey}.rank_aligned_pairs.${d} must have "${a}->${anchors[i + 1]}" as an ${E}x${E} matrix`);
      return Float64Array.from(m.flat());
    }),
  );
  return { model: c.model, numExperts: E, topK: c.top_k, sourceLayers, domains, anchors, counts, transitions };
}

/** Options of {@link generateTrace}. */
export interface GenerateTraceOptions {
  stats: RoutingStats;
  numLayers: number;
  numExperts: number;
  topK: number;
  requests: number;
  /** Decode iterations per request, drawn uniformly from [min, max]. */
  iterations: [number, number];
  seed: number;
  embedDim?: number;
  /** Noise norm relative to the domain centroid's (default 0.8). */
  embedNoise?: number;
  /** Probability that an unmeasured layer redraws instead of copying its anchor (default 0.15). */
  copyNoise?: number;
  /** Record full gate vectors (default true). */
  fullGates?: boolean;
}

/** Per-layer sampling plan shared by every request of a generated trace. */
interface LayerPlan {
  anchor: number; // anchor index if this layer is an anchor, else -1
  lower: number;
  upper: number; // -1 if none
  lambda: number;
  perm: Int32Array;
}

/** Target-layer position of each anchor of `stats` in a model of `numLayers` layers. */
export function anchorLayers(stats: RoutingStats, numLayers: number): number[] {
  const out = stats.anchors.map((a) => (numLayers === stats.sourceLayers ? a : Math.round((a * (numLayers - 1)) / (stats.sourceLayers - 1))));
  for (let i = 1; i < out.length; i++) {
    if (out[i]! <= out[i - 1]!) throw new InvalidArgumentError(`numLayers must be large enough to keep the ${stats.anchors.length} measured layers distinct, received ${numLayers}`);
  }
  return out;
}

/**
 * Generates a routing trace calibrated on real statistics (see the file header for the model).
 *
 * @example
 * const stats = routingStatsFromJson(counts, cross, 'olmoe', 16);
 * const trace = generateTrace({ stats, numLayers: 16, numExperts: 64, topK: 8, requests: 40, iterations: [16, 32], seed: 1 });
 */
export function generateTrace(o: GenerateTraceOptions): RoutingTrace {
  const st = o.stats;
  const L = checkInt('options.numLayers', o.numLayers, 1, 65535);
  const E = checkInt('options.numExperts', o.numExperts, 1, st.numExperts);
  const k = checkInt('options.topK', o.topK, 1, E);
  const R = checkInt('options.requests', o.requests, 0);
  if (!Array.isArray(o.iterations) || o.iterations.length !== 2) throw new InvalidArgumentError(`options.iterations must be [min, max], received ${String(o.iterations)}`);
  const itMin = checkInt('options.iterations[0]', o.iterations[0], 1);
  const itMax = checkInt('options.iterations[1]', o.iterations[1], itMin);
  const D = checkInt('options.embedDim', o.embedDim ?? 32, 1, 65535);
  const embedNoise = checkNumber('options.embedNoise', o.embedNoise ?? 0.8, 0);
  const copyNoise = checkNumber('options.copyNoise', o.copyNoise ?? 0.15, 0, 1);
  const full = o.fullGates ?? true;
  const rng = new Rng(checkInt('options.seed', o.seed, 0, 2 ** 32 - 1));
  const SE = st.numExperts;
  const nA = st.anchors.length;
  const nD = st.domains.length;
  const aLayers = anchorLayers(st, L);

  // Popularity [domain][anchor] and transition rows restricted to experts < E.
  const pop = st.counts.map((byA) => byA.map((c) => c.slice(0, E)));
  const trans = st.transitions.map((byA) =>
    byA.map((m) => {
      const t = new Float64Array(E * E);
      for (let a = 0; a < E; a++) for (let b = 0; b < E; b++) t[a * E + b] = m[a * SE + b]!;
      return t;
    }),
  );

  const plans: LayerPlan[] = [];
  for (let l = 0; l < L; l++) {
    const ai = aLayers.indexOf(l);
    let lower = 0;
    for (let i = 0; i < nA; i++) if (aLayers[i]! <= l) lower = i;
    const upper = lower + 1 < nA && aLayers[lower]! < l ? lower + 1 : -1;
    const lambda = upper < 0 ? 0 : (l - aLayers[lower]!) / (aLayers[upper]! - aLayers[lower]!);
    const perm = Int32Array.from({ length: E }, (_, i) => i);
    if (ai < 0) {
      for (let i = E - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        const t = perm[i]!;
        perm[i] = perm[j]!;
        perm[j] = t;
      }
    }
    plans.push({ anchor: ai, lower, upper, lambda, perm });
  }
  // Layer popularity [domain][layer] (permuted interpolation of the anchors), used for noise and gate tails.
  const layerPop = pop.map((byA) =>
    plans.map((p) => {
      const out = new Float64Array(E);
      const a = byA[p.lower]!;
      const sa = a.reduce((x, y) => x + y, 0) || 1;
      const b = p.upper >= 0 ? byA[p.upper]! : a;
      const sb = b.reduce((x, y) => x + y, 0) || 1;
      for (let e = 0; e < E; e++) out[p.perm[e]!] = (1 - p.lambda) * (a[e]! / sa) + p.lambda * (b[e]! / sb);
      return out;
    }),
  );

  const centroids: Float32Array[] = [];
  for (let d = 0; d < nD; d++) {
    const c = new Float32Array(D);
    let n = 0;
    for (let i = 0; i < D; i++) n += (c[i] = rng.normal()) ** 2;
    n = Math.sqrt(n);
    for (let i = 0; i < D; i++) c[i]! /= n;
    centroids.push(c);
  }

  const w = new Float64Array(E);
  const anchorE = new Int32Array(nA * k);
  const score = new Float64Array(E);
  const picked = new Int32Array(k);
  const chosen = new Uint8Array(E);
  const draw = (weights: Float64Array, off: number): number => {
    for (let e = 0; e < E; e++) w[e] = chosen[e] ? 0 : weights[off + e]!;
    let e = rng.pick(w);
    if (e < 0) for (e = 0; chosen[e]; e++);
    return e;
  };

  const requests: TraceRequest[] = [];
  for (let r = 0; r < R; r++) {
    const dom = rng.int(nD);
    const emb = new Float32Array(D);
    for (let i = 0; i < D; i++) emb[i] = centroids[dom]![i]! + (embedNoise / Math.sqrt(D)) * rng.normal();
    const iters = itMin + rng.int(itMax - itMin + 1);
    const ids = new Uint16Array(iters * L * k);
    const probs = new Float32Array(iters * L * k);
    const gates = full ? new Float32Array(iters * L * E) : undefined;
    for (let t = 0; t < iters; t++) {
      // anchors first: layer 0 from the domain's popularity, each later anchor from the sum of the transition
      // rows of the experts chosen at the previous anchor; k distinct experts with those inclusion weights
      for (let a = 0; a < nA; a++) {
        if (a === 0) score.set(pop[dom]![0]!);
        else {
          score.fill(0);
          const m = trans[dom]![a - 1]!;
          for (let rank = 0; rank < k; rank++) {
            const row = anchorE[(a - 1) * k + rank]! * E;
            let s = 0;
            for (let e = 0; e < E; e++) s += m[row + e]!;
            if (s > 0) for (let e = 0; e < E; e++) score[e]! += m[row + e]! / s;
          }
        }
        sampleDistinct(score, k, rng, picked);
        if (a > 0) {
          // rank alignment: rank r takes one of the picked experts with probability ~ the real rank-aligned row
          const m = trans[dom]![a - 1]!;
          let left = k;
          for (let rank = 0; rank < k; rank++) {
            const row = anchorE[(a - 1) * k + rank]! * E;
            for (let i = 0; i < left; i++) w[i] = m[row + picked[i]!]! + 1e-9;
            const i = Math.max(0, rng.pick(w, 0, left));
            anchorE[a * k + rank] = picked[i]!;
            picked[i] = picked[left - 1]!;
            left--;
          }
        } else anchorE.set(picked, 0);
      }
      for (let l = 0; l < L; l++) {
        const p = plans[l]!;
        const base = (t * L + l) * k;
        chosen.fill(0);
        for (let rank = 0; rank < k; rank++) {
          let e: number;
          if (p.anchor >= 0) e = anchorE[p.anchor * k + rank]!;
          else {
            const src = p.upper >= 0 && rng.next() < p.lambda ? p.upper : p.lower;
            e = p.perm[anchorE[src * k + rank]!]!;
            if (chosen[e] || rng.next() < copyNoise) e = draw(layerPop[dom]![l]!, 0);
          }
          chosen[e] = 1;
          ids[base + rank] = e;
        }
        // gate probabilities
        const m = 0.5 + 0.35 * rng.next();
        let z = 0;
        for (let rank = 0; rank < k; rank++) z += 0.75 ** rank;
        for (let rank = 0; rank < k; rank++) probs[base + rank] = (m * 0.75 ** rank) / z;
        if (gates) {
          const g = (t * L + l) * E;
          const lp = layerPop[dom]![l]!;
          let tail = 0;
          for (let e = 0; e < E; e++) if (!chosen[e]) tail += lp[e]!;
          for (let e = 0; e < E; e++) gates[g + e] = chosen[e] ? 0 : tail > 0 ? ((1 - m) * lp[e]!) / tail : 0;
          for (let rank = 0; rank < k; rank++) gates[g + ids[base + rank]!] = probs[base + rank]!;
        }
      }
    }
    const req: TraceRequest = { domain: dom, iterations: iters, embedding: emb, ids, probs };
    if (gates) req.gates = gates;
    requests.push(req);
  }
  return { numLayers: L, numExperts: E, topK: k, embedDim: D, requests };
}

/**
 * Draws k distinct indices whose inclusion probabilities are proportional to `score` (capped at 1, so a dominant
 * expert is included in nearly every token, as in the real counts), by systematic sampling over a random order;
 * writes them to `out` ordered so heavier experts tend to get the lower ranks.
 */
export function sampleDistinct(score: ArrayLike<number>, k: number, rng: Rng, out: Int32Array): void {
  const E = score.length;
  const pi = new Float64Array(E);
  const capped = new Uint8Array(E);
  for (;;) {
    let free = k;
    let sum = 0;
    for (let e = 0; e < E; e++) {
      if (capped[e]) free--;
      else sum += score[e]! + 1e-12;
    }
    let changed = false;
    for (let e = 0; e < E; e++) {
      if (capped[e]) pi[e] = 1;
      else {
        pi[e] = (free * (score[e]! + 1e-12)) / sum;
        if (pi[e]! >= 1) {
          capped[e] = 1;
          changed = true;
        }
      }
    }
    if (!changed) break;
  }
  const order = Int32Array.from({ length: E }, (_, i) => i);
  for (let i = E - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  const u = rng.next();
  let cum = 0;
  let n = 0;
  for (let i = 0; i < E && n < k; i++) {
    const e = order[i]!;
    const next = cum + pi[e]!;
    if (next > u + n - 1e-9 && n < k) out[n++] = e;
    cum = next;
  }
  for (let e = 0; n < k && e < E; e++) if (!out.subarray(0, n).includes(e)) out[n++] = e;
  // rank order: heavier inclusion probability first, randomised
  const key = Array.from(out, (e) => pi[e]! * (0.5 + rng.next()));
  const idx = Array.from({ length: k }, (_, i) => i).sort((a, b) => key[b]! - key[a]!);
  const copy = Array.from(out);
  for (let i = 0; i < k; i++) out[i] = copy[idx[i]!]!;
}

/** Pearson correlation of two equal-length vectors. */
export function pearson(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length;
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i]!;
    mb += b[i]!;
  }
  ma /= n;
  mb /= n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const x = a[i]! - ma;
    const y = b[i]! - mb;
    sab += x * y;
    saa += x * x;
    sbb += y * y;
  }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : 0;
}

/** How one generated statistic compares with the real one. */
export interface CalibrationRow {
  domain: string;
  /** e.g. "layer 7" or "0->7". */
  what: string;
    /** Pearson correlation of per-expert counts (or of the E x E joint for transitions). */
  correlation: number;
  /** Busiest expert's share over the uniform share (skew), real and generated (layers only). */
  skewReal: number;
  skewGenerated: number;
  /** Total variation distance between the normalised real and generated distributions. */
  tvd: number;
}

/**
 * Compares a generated trace with the statistics it was calibrated on: per domain and measured layer, expert
 * popularity (correlation, skew of the busiest expert, total variation) and per anchor pair the rank-aligned
 * joint distribution. Requires the trace to come from generateTrace (domains recorded) with the same shape as
 * the source (or fewer experts).
 */
export function calibrationReport(stats: RoutingStats, trace: RoutingTrace): CalibrationRow[] {
  const { numLayers: L, numExperts: E, topK: k } = trace;
  const aL = anchorLayers(stats, L);
  const nA = aL.length;
  const rows: CalibrationRow[] = [];
  for (let d = 0; d < stats.domains.length; d++) {
    const gen = aL.map(() => new Float64Array(E));
    const joint = aL.slice(0, -1).map(() => new Float64Array(E * E));
    for (const r of trace.requests) {
      if (r.domain !== d) continue;
      for (let t = 0; t < r.iterations; t++) {
        for (let a = 0; a < nA; a++) {
          const base = (t * L + aL[a]!) * k;
          for (let i = 0; i < k; i++) gen[a]![r.ids[base + i]!]! += 1;
          if (a + 1 < nA) {
            const nb = (t * L + aL[a + 1]!) * k;
            for (let i = 0; i < k; i++) joint[a]![r.ids[base + i]! * E + r.ids[nb + i]!]! += 1;
          }
        }
      }
    }
    const tvd = (x: ArrayLike<number>, y: ArrayLike<number>) => {
      let sx = 0;
      let sy = 0;
      for (let i = 0; i < x.length; i++) {
        sx += x[i]!;
        sy += y[i]!;
      }
      let t = 0;
      for (let i = 0; i < x.length; i++) t += Math.abs(x[i]! / (sx || 1) - y[i]! / (sy || 1));
      return t / 2;
    };
    const skew = (x: ArrayLike<number>) => {
      let s = 0;
      let m = 0;
      for (let i = 0; i < x.length; i++) {
        s += x[i]!;
        m = Math.max(m, x[i]!);
      }
      return s > 0 ? (m / s) * x.length : 0;
    };
    for (let a = 0; a < nA; a++) {
      const real = stats.counts[d]![a]!.slice(0, E);
      rows.push({ domain: stats.domains[d]!, what: `layer ${stats.anchors[a]}`, correlation: pearson(real, gen[a]!), skewReal: skew(real), skewGenerated: skew(gen[a]!), tvd: tvd(real, gen[a]!) });
    }
    for (let a = 0; a + 1 < nA; a++) {
      const SE = stats.numExperts;
      const real = new Float64Array(E * E);
      for (let x = 0; x < E; x++) for (let y = 0; y < E; y++) real[x * E + y] = stats.transitions[d]![a]![x * SE + y]!;
      rows.push({ domain: stats.domains[d]!, what: `${stats.anchors[a]}->${stats.anchors[a + 1]}`, correlation: pearson(real, joint[a]!), skewReal: NaN, skewGenerated: NaN, tvd: tvd(real, joint[a]!) });
    }
  }
  return rows;
}
