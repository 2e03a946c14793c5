/**
 * Paged KV cache in host memory (issue 5): the policy (pages, reference counts, per-sequence block tables) in
 * TypeScript, the storage in one PinnedBuffer from a Backend (cudaHostAlloc'd, so async copies from the GPU can
 * land in it, when the backend is CUDA; page-aligned host memory on the CPU backend).
 *
 * Layout of the buffer (elements of `dtype`):
 *   [layers][2 (K, V)][numPages][kvHeads][blockSize][headDim]
 * A page id names the same slot in every layer, so one block table per sequence serves all layers. Within a
 * layer's K (or V) pool one (page, kv head) is blockSize * headDim contiguous elements: the attention kernel
 * (Backend.attention, cpp/cpu/attention.h) reads each page once per kv head, for every query head of its group.
 *
 * Capacity comes from a byte budget: numPages = floor(budget / (layers * 2 * kvHeads * blockSize * headDim *
 * sizeof(dtype))). Sequences share pages after `fork` (reference counts); appending to a sequence whose last,
 * partial page is shared copies that page first (copy on write). Running out of pages throws OutOfMemoryError
 * and changes nothing: a page in use is never overwritten.
 *
 * Rotary embedding: the cache stores ROTATED keys. Per layer the intended order is: project q, k, v; then
 * `be.rope({ q, k, positions, invFreq })` (Backend.rope, positions = pos .. pos + n - 1 from `append`); then
 * `write(layer, seq, pos, k, v)` (or `writeMany` for a batched step's sequences at once); then `be.attention`. The
 * cache itself never applies RoPE (a key written once is read by every later step, so rotating at write time costs
 * once per token, and the attention kernel stays position-free).
 *
 * @example
 * const cache = KvCache.create(be, { layers: 2, kvHeads: 8, headDim: 128, budgetBytes: 64 << 20 });
 * const s = cache.allocate();
 * const pos = cache.append(s, 5);                      // room for 5 tokens at positions pos .. pos + 4
 * cache.write(0, s, pos, k, v);                        // k, v: HostTensor [5, 8, 128] (bf16 or f32)
 * const t = cache.fork(s);                             // shares s's pages
 * const b = cache.batch([s, t], [5, 5]);               // { blockTables, kvLens, qLens } for Backend.attention
 * await be.attention({ q, k: cache.keys(0), v: cache.values(0), out, ...b });
 */
import type { Backend } from '../backend.js';
import { DTYPE_SIZE, checkDType, describe } from '../dtype.js';
import { InvalidArgumentError, OutOfMemoryError } from '../errors.js';
import { HostTensor, MAX_VIEW_BYTES, type PinnedBuffer } from '../tensor.js';

export type KvDType = 'bf16' | 'f16' | 'f32';

export interface KvCacheOptions {
  layers: number;
  kvHeads: number;
  /** 64, 128 or 256 (what the attention kernel supports) */
  headDim: number;
  /**
   * tokens per page (default 64: each (page, kv head) is then a 16 KiB run at head_dim 128 bf16, long enough for
   * the decode kernel to stream near the memory bandwidth; 16 measured ~25% slower on decode, see
   * bench/native/attention_bench.cc). Smaller pages waste less memory per sequence and share forks more finely.
   */
  blockSize?: number;
  /** element type of K and V (default 'bf16') */
  dtype?: KvDType;
  /** bytes of host memory for the cache; numPages = floor(budgetBytes / bytesPerPage) */
  budgetBytes: number;
}

/** Metadata tensors for Backend.attention over a batch of sequences. */
export interface KvBatch {
  /** [numSeqs, maxBlocks] i32, padded with -1 */
  blockTables: HostTensor<'i32'>;
  /** [numSeqs] i32 */
  kvLens: HostTensor<'i32'>;
  /** [numSeqs] i32 */
  qLens: HostTensor<'i32'>;
}

interface Seq {
  pages: number[];
  len: number;
}

function posInt(v: unknown, what: string, min = 1): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new InvalidArgumentError(`${what} must be an integer >= ${min}, received ${describe(v)}`);
  }
  return v;
}

export class KvCache {
  readonly layers: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly blockSize: number;
  readonly dtype: KvDType;
  readonly numPages: number;
  /** Bytes one page takes over all layers, K and V. */
  readonly bytesPerPage: number;
  /** [layer * 2 + kind] pinned K (kind 0) and V (kind 1) pages of each layer: [numPages, kvHeads, blockSize, headDim]. */
  /** The backend whose pinned memory holds the pages; its CPU side runs the writes. */
  readonly #be: Backend;
  readonly #bufs: PinnedBuffer[];
  readonly #elems: Array<Float32Array | Uint16Array>; // their elements
  readonly #refs: Int32Array; // [numPages] reference counts
  readonly #free: number[]; // free page ids (a stack)
  readonly #seqs = new Map<number, Seq>();
  #nextId = 0;

  /** @internal use KvCache.create */
  private constructor(be: Backend, bufs: PinnedBuffer[], o: Required<KvCacheOptions>, numPages: number, bytesPerPage: number) {
    this.#be = be;
    this.#bufs = bufs;
    this.layers = o.layers;
    this.kvHeads = o.kvHeads;
    this.headDim = o.headDim;
    this.blockSize = o.blockSize;
    this.dtype = o.dtype;
    this.numPages = numPages;
    this.bytesPerPage = bytesPerPage;
    this.#elems = bufs.map((b) => b.tensor(o.dtype, [numPages * this.#pageElems]).data as Float32Array | Uint16Array);
    this.#refs = new Int32Array(numPages);
    this.#free = [];
    for (let p = numPages - 1; p >= 0; p--) this.#free.push(p);
  }

  /**
   * A cache of floor(budgetBytes / bytesPerPage) pages in pinned memory of `backend`, one buffer per layer for K
   * and one for V.
   * @throws InvalidArgumentError for bad options, a budget below one page, or one whose per-layer K (or V) buffer
   *   would exceed MAX_VIEW_BYTES (4 GiB on Node 20: the JS view the KV writes use); OutOfMemoryError when a pinned
   *   allocation fails (nothing stays allocated).
   */
  static create(backend: Backend, options: KvCacheOptions): KvCache {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`options must be an object, received ${describe(options)}`);
    const layers = posInt(options.layers, 'options.layers');
    const kvHeads = posInt(options.kvHeads, 'options.kvHeads');
    const headDim = posInt(options.headDim, 'options.headDim');
    if (headDim !== 64 && headDim !== 128 && headDim !== 256) throw new InvalidArgumentError(`options.headDim must be 64, 128 or 256, received ${headDim}`);
    const blockSize = posInt(options.blockSize ?? 64, 'options.blockSize');
    if (blockSize > 4096) throw new InvalidArgumentError(`options.blockSize must be <= 4096, received ${blockSize}`);
    const dtype = checkDType(options.dtype ?? 'bf16', 'options.dtype', ['bf16', 'f16', 'f32']) as KvDType;
    const budget = posInt(options.budgetBytes, 'options.budgetBytes', 0);
    const bytesPerPage = layers * 2 * kvHeads * blockSize * headDim * DTYPE_SIZE[dtype];
    const numPages = Math.min(Math.floor(budget / bytesPerPage), 0x7fffffff);
    if (numPages < 1) {
      throw new InvalidArgumentError(`options.budgetBytes must hold at least one page of ${bytesPerPage} bytes, received ${budget}`);
    }
    // one buffer per layer and K / V: a JS view (the KV writes) addresses at most MAX_VIEW_BYTES of native memory
    const regionBytes = numPages * (bytesPerPage / (2 * layers));
    if (regionBytes > MAX_VIEW_BYTES) {
      throw new InvalidArgumentError(
        `options.budgetBytes (${budget}) gives ${numPages} pages: the K (and the V) pages of one layer would take ${regionBytes} bytes, above the ${MAX_VIEW_BYTES} ` +
          `bytes a JS view of native memory can address (Node's limit for external buffers); use at most ${Math.floor(MAX_VIEW_BYTES / (bytesPerPage / (2 * layers))) * bytesPerPage}`,
      );
    }
    const bufs: PinnedBuffer[] = [];
    try {
      for (let i = 0; i < 2 * layers; i++) bufs.push(backend.allocPinned(regionBytes));
    } catch (e) {
      for (const b of bufs) b.dispose();
      throw e;
    }
    return new KvCache(backend, bufs, { layers, kvHeads, headDim, blockSize, dtype, budgetBytes: budget }, numPages, bytesPerPage);
  }

  get #pageElems(): number {
    return this.kvHeads * this.blockSize * this.headDim;
  }

  /** Element offset of `page` in its (layer, kind) buffer. */
  #pageOffset(page: number): number {
    return page * this.#pageElems;
  }

  #checkLayer(layer: unknown): number {
    if (typeof layer !== 'number' || !Number.isSafeInteger(layer) || layer < 0 || layer >= this.layers) {
      throw new InvalidArgumentError(`layer must be an integer in [0, ${this.layers}), received ${describe(layer)}`);
    }
    return layer;
  }

  #seq(id: unknown): Seq {
    const s = typeof id === 'number' ? this.#seqs.get(id) : undefined;
    if (!s) throw new InvalidArgumentError(`sequence ${describe(id)} is not allocated in this cache`);
    return s;
  }

  /** K pages of `layer`: [numPages, kvHeads, blockSize, headDim] (a view; valid until dispose). */
  keys(layer: number): HostTensor {
    return this.#bufs[this.#checkLayer(layer) * 2]!.tensor(this.dtype, [this.numPages, this.kvHeads, this.blockSize, this.headDim]);
  }

  /** V pages of `layer`: [numPages, kvHeads, blockSize, headDim]. */
  values(layer: number): HostTensor {
    return this.#bufs[this.#checkLayer(layer) * 2 + 1]!.tensor(this.dtype, [this.numPages, this.kvHeads, this.blockSize, this.headDim]);
  }

  /** Pages not used by any sequence. */
  get freePages(): number {
    return this.#free.length;
  }

  /** Sequences allocated. */
  get sequences(): number {
    return this.#seqs.size;
  }

  /** A new empty sequence; returns its id. */
  allocate(): number {
    const id = this.#nextId++;
    this.#seqs.set(id, { pages: [], len: 0 });
    return id;
  }

  /** Tokens in sequence `seq`. */
  length(seq: number): number {
    return this.#seq(seq).len;
  }

  /** The page ids of `seq`, in order (a copy). */
  blockTable(seq: number): number[] {
    return [...this.#seq(seq).pages];
  }

  /** How many sequences use `page` (0: free). */
  refCount(page: number): number {
    if (!Number.isSafeInteger(page) || page < 0 || page >= this.numPages) throw new InvalidArgumentError(`page must be in [0, ${this.numPages}), received ${describe(page)}`);
    return this.#refs[page]!;
  }

  /** Pages an append of n tokens to s needs: new pages, plus one to copy a shared partial last page. */
  #pagesFor(s: Seq, n: number): number {
    const bs = this.blockSize;
    const grow = Math.ceil((s.len + n) / bs) - Math.ceil(s.len / bs);
    const cow = n > 0 && s.len % bs !== 0 && this.#refs[s.pages[s.pages.length - 1]!]! > 1 ? 1 : 0;
    return grow + cow;
  }

  /**
   * How many more tokens fit: with `seq`, how many `append(seq, n)` can take (its last page's free slots
   * included; a shared last page counts as needing a copy); without, the free pages' tokens.
   */
  tokensFree(seq?: number): number {
    if (seq === undefined) return this.#free.length * this.blockSize;
    const s = this.#seq(seq);
    const bs = this.blockSize;
    const room = s.len % bs === 0 ? 0 : bs - (s.len % bs);
    if (room === 0) return this.#free.length * bs;
    const shared = this.#refs[s.pages[s.pages.length - 1]!]! > 1;
    if (shared) return this.#free.length === 0 ? 0 : room + (this.#free.length - 1) * bs;
    return room + this.#free.length * bs;
  }

  /**
   * Grows `seq` by n tokens (their K/V are written with `write`), taking pages as needed; a shared partial last
   * page is copied first (all layers) so the other sequences keep their contents. Returns the first new position.
   * @throws OutOfMemoryError when the pages run out (nothing changes).
   */
  append(seq: number, n: number): number {
    const s = this.#seq(seq);
    posInt(n, 'n', 0);
    const need = this.#pagesFor(s, n);
    if (need > this.#free.length) {
      throw new OutOfMemoryError(
        `KV cache out of pages: appending ${n} tokens to sequence ${seq} (length ${s.len}) needs ${need} pages, ${this.#free.length} of ${this.numPages} are free`,
      );
    }
    const bs = this.blockSize;
    if (n > 0 && s.len % bs !== 0) {
      const last = s.pages.length - 1;
      const old = s.pages[last]!;
      if (this.#refs[old]! > 1) {
        const fresh = this.#free.pop()!;
        const pe = this.#pageElems;
        const src = this.#pageOffset(old);
        for (const e of this.#elems) e.copyWithin(this.#pageOffset(fresh), src, src + pe);
        this.#refs[old]!--;
        this.#refs[fresh] = 1;
        s.pages[last] = fresh;
      }
    }
    const start = s.len;
    const pagesAfter = Math.ceil((s.len + n) / bs);
    while (s.pages.length < pagesAfter) {
      const p = this.#free.pop()!;
      this.#refs[p] = 1;
      s.pages.push(p);
    }
    s.len += n;
    return start;
  }

  /**
   * Writes K and V of tokens pos .. pos + n - 1 of `seq` in `layer`. k and v: [n, kvHeads, headDim], of the
   * cache's dtype (copied) or f32 (rounded to nearest even). The positions must have been appended and must not
   * lie in a page shared with another sequence (append after fork copies the page it writes into).
   * Bad arguments throw before anything is queued; the rows land when the Promise resolves.
   */
  write(layer: number, seq: number, pos: number, k: HostTensor, v: HostTensor): Promise<void> {
    // (a k that is no HostTensor fails writeMany's checks before n is used)
    return this.writeMany(layer, [{ seq, pos, n: k instanceof HostTensor ? (k.shape[0] ?? 0) : 0 }], k, v);
  }

  /**
   * `write` for several sequences at once (a batched step): k and v [T, kvHeads, headDim] hold the entries' rows one
   * after the other, T = sum of n. Checks the arguments synchronously (throws before anything is queued); the rows
   * go out in one native scatter each for K and V (Backend.scatterRows, converting f32 on the way), which rejects
   * without writing anything if two entries name the same position.
   * @example
   * await cache.writeMany(0, [{ seq: a, pos: 7, n: 1 }, { seq: b, pos: 3, n: 1 }], k, v); // k, v: [2, kvHeads, headDim]
   */
  writeMany(layer: number, entries: ReadonlyArray<{ seq: number; pos: number; n: number }>, k: HostTensor, v: HostTensor): Promise<void> {
    this.#checkLayer(layer);
    for (const [t, w] of [[k, 'k'], [v, 'v']] as const) {
      if (!(t instanceof HostTensor)) throw new InvalidArgumentError(`${w} must be a HostTensor, received ${describe(t)}`);
      if (t.dtype !== this.dtype && t.dtype !== 'f32') throw new InvalidArgumentError(`${w}.dtype must be ${this.dtype} or f32, received ${t.dtype}`);
      if (t.shape.length !== 3 || t.shape[1] !== this.kvHeads || t.shape[2] !== this.headDim) {
        throw new InvalidArgumentError(`${w} must be [n, ${this.kvHeads}, ${this.headDim}], received [${t.shape.join(', ')}]`);
      }
    }
    const T = k.shape[0]!;
    if (v.shape[0] !== T) throw new InvalidArgumentError(`v must have k's ${T} tokens, received ${v.shape[0]}`);
    const bs = this.blockSize;
    const seqs: Seq[] = [];
    let rows = 0;
    for (const { seq, pos, n } of entries) {
      const s = this.#seq(seq);
      if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`n must be a non-negative integer, received ${describe(n)}`);
      if (!Number.isSafeInteger(pos) || pos < 0 || pos + n > s.len) {
        throw new InvalidArgumentError(`positions ${describe(pos)} .. ${pos + n - 1} must lie in [0, ${s.len}) (sequence ${seq}'s length)`);
      }
      for (let t = 0; t < n; t++) {
        const page = s.pages[Math.floor((pos + t) / bs)]!;
        if (this.#refs[page]! > 1) {
          throw new InvalidArgumentError(`position ${pos + t} of sequence ${seq} lies in page ${page}, shared with a forked sequence: write only positions appended after the fork`);
        }
      }
      seqs.push(s);
      rows += n;
    }
    if (rows !== T) throw new InvalidArgumentError(`k and v must have the entries' ${rows} tokens, received ${T}`);
    if (T === 0) return Promise.resolve();
    // destination row (of headDim elements) of each (token, kv head): [numPages][kvHeads][blockSize] rows per layer
    const kvH = this.kvHeads;
    const ids = new HostTensor('i32', [T * kvH]);
    let row = 0;
    entries.forEach(({ pos, n }, j) => {
      const pages = seqs[j]!.pages;
      for (let t = 0; t < n; t++, row++) {
        const p = pos + t;
        const base = pages[Math.floor(p / bs)]! * kvH * bs + (p % bs);
        for (let h = 0; h < kvH; h++) ids.data[row * kvH + h] = base + h * bs;
      }
    });
    const pageRows = this.numPages * kvH * bs;
    const hd = this.headDim;
    return Promise.all([
      this.#be.scatterRows(k.reshape([T * kvH, hd]), ids, this.#bufs[layer * 2]!.tensor(this.dtype, [pageRows, hd])),
      this.#be.scatterRows(v.reshape([T * kvH, hd]), ids, this.#bufs[layer * 2 + 1]!.tensor(this.dtype, [pageRows, hd])),
    ]).then(() => undefined);
  }

  /** A new sequence sharing all of `seq`'s pages (reference counts go up); returns its id. */
  fork(seq: number): number {
    const s = this.#seq(seq);
    for (const p of s.pages) this.#refs[p]!++;
    const id = this.#nextId++;
    this.#seqs.set(id, { pages: [...s.pages], len: s.len });
    return id;
  }

  /** Releases `seq`: its pages return to the free list when no other sequence uses them. */
  free(seq: number): void {
    const s = this.#seq(seq);
    for (const p of s.pages) {
      if (--this.#refs[p]! === 0) this.#free.push(p);
    }
    this.#seqs.delete(seq);
  }

  /**
   * Block tables and lengths of `seqs` for Backend.attention; qLens[i] is the number of query tokens of seqs[i]
   * in this step (its last qLens[i] positions).
   */
  batch(seqs: readonly number[], qLens: readonly number[]): KvBatch {
    if (!Array.isArray(seqs) || !Array.isArray(qLens) || seqs.length !== qLens.length) {
      throw new InvalidArgumentError(`seqs and qLens must be arrays of the same length, received ${describe(seqs)} and ${describe(qLens)}`);
    }
    const ss = seqs.map((id) => this.#seq(id));
    const maxBlocks = Math.max(1, ...ss.map((s) => s.pages.length));
    const bt = new Int32Array(ss.length * maxBlocks).fill(-1);
    const kv = new Int32Array(ss.length);
    const ql = new Int32Array(ss.length);
    ss.forEach((s, i) => {
      bt.set(s.pages, i * maxBlocks);
      kv[i] = s.len;
      const q = qLens[i];
      if (typeof q !== 'number' || !Number.isSafeInteger(q) || q < 0 || q > s.len) {
        throw new InvalidArgumentError(`qLens[${i}] must be an integer in [0, ${s.len}] (the sequence's length), received ${describe(q)}`);
      }
      ql[i] = q;
    });
    return {
      blockTables: new HostTensor('i32', [ss.length, maxBlocks], bt),
      kvLens: new HostTensor('i32', [ss.length], kv),
      qLens: new HostTensor('i32', [ss.length], ql),
    };
  }

  /** Frees the pinned memory; views from keys()/values() become unusable. */
  /**
   * Maps in every page of the cache now, off the JS thread (Backend.prefault), so that the first steps to use each
   * page do not pay its page faults (on the CPU backend the pages are fresh mappings; loadModel runs this while the
   * weights load). Safe while the cache is in use. Resolves with whether it populated anything.
   * @example await kv.prefault();
   */
  async prefault(options: { signal?: AbortSignal } = {}): Promise<boolean> {
    const done = await Promise.all(this.#bufs.map((b) => this.#be.prefault(b, options)));
    return done.some((d) => d);
  }

  dispose(): void {
    for (const b of this.#bufs) b.dispose();
    this.#seqs.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

