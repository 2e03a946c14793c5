/**
 * safetensors reading and writing, single files and sharded checkpoints (`model.safetensors.index.json`).
 *
 * Format: an 8-byte little-endian header length N, N bytes of JSON `{ name: { dtype, shape, data_offsets:
 * [begin, end] }, "__metadata__"?: {...} }` (offsets relative to the data that follows), then the raw
 * little-endian data. Opening reads and validates the header only; `read()` copies one tensor straight into its
 * destination (a HostTensor, e.g. a view of pinned memory) in bounded chunks, so no file is ever buffered whole.
 *
 * Validation (each failure is a CheckpointFormatError naming the file and tensor): truncated file, header over
 * the size limit or not JSON, unknown dtype, bad shape, a byte size that disagrees with shape x dtype,
 * overlapping, out-of-range or non-contiguous offsets, trailing bytes, missing shards or tensors.
 *
 * @example
 * const ckpt = await Checkpoint.open('/models/tiny-mixtral');
 * const info = ckpt.tensor('model.layers.0.block_sparse_moe.gate.weight');   // { dtype: 'BF16', shape: [8, 64], ... }
 * const w = await ckpt.read(info.name);                                        // HostTensor<'bf16'>
 * await ckpt.read(info.name, pinned.tensor('bf16', info.shape));               // straight into pinned memory
 * await ckpt.close();
 */
import fs from 'node:fs';
import path from 'node:path';

import { type DType, describe } from '../dtype.js';
import { CheckpointFormatError, InvalidArgumentError } from '../errors.js';
import { HostTensor } from '../tensor.js';

/** Every dtype of the safetensors spec, with its element size in bytes. */
export const SAFETENSORS_DTYPE_SIZE = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
  F8_E4M3: 1, F8_E5M2: 1, F8_E8M0: 1,
} as const;
export type SafetensorsDType = keyof typeof SAFETENSORS_DTYPE_SIZE;

const TO_DTYPE: Partial<Record<SafetensorsDType, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16', I32: 'i32', U8: 'u8' };
const FROM_DTYPE: Record<DType, SafetensorsDType> = { f32: 'F32', f16: 'F16', bf16: 'BF16', i32: 'I32', u8: 'U8' };

/** Headers above this are refused (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;
/** Reads are issued in chunks of this size (bounded extra work per syscall, prompt cancellation). */
const READ_CHUNK = 64 * 1024 * 1024;

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  /** Absolute position of the first byte in `file`. */
  filePosition: number;
  byteLength: number;
  file: string;
}

function fail(file: string, tensor: string | undefined, message: string): never {
  throw new CheckpointFormatError(file, tensor, message);
}

/** One .safetensors file: a validated header and an open file handle. */
export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  #fh: fs.promises.FileHandle | undefined;

  private constructor(p: string, fh: fs.promises.FileHandle, metadata: Record<string, string>, tensors: Map<string, TensorInfo>) {
    this.path = p;
    this.#fh = fh;
    this.metadata = metadata;
    this.tensors = tensors;
  }

  /** Opens and validates `file` (reads the header only). */
  static async open(file: string, options: { maxHeaderBytes?: number } = {}): Promise<SafetensorsFile> {
    const limit = options.maxHeaderBytes ?? MAX_HEADER_BYTES;
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(file, 'r');
    } catch (e) {
      fail(file, undefined, `cannot open: ${(e as Error).message}`);
    }
    try {
      const size = (await fh.stat()).size;
      if (size < 8) fail(file, undefined, `truncated: ${size} bytes, not even the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      await readFully(fh, lenBuf, 0, file);
      const n = lenBuf.readBigUInt64LE(0);
      if (n > BigInt(limit)) fail(file, undefined, `header of ${n} bytes exceeds the limit of ${limit} bytes`);
      const headerBytes = Number(n);
      if (8 + headerBytes > size) fail(file, undefined, `truncated: header says ${headerBytes} bytes but the file has ${size - 8} after the length`);
      const hb = Buffer.alloc(headerBytes);
      await readFully(fh, hb, 8, file);
      const { metadata, tensors } = parseHeader(hb, file, 8 + headerBytes, size);
      return new SafetensorsFile(file, fh, metadata, tensors);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Info of tensor `name`; throws CheckpointFormatError when absent. */
  tensor(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) fail(this.path, name, 'no such tensor in this file');
    return t;
  }

  /**
   * Reads tensor `name` into `dst` (same byte size; its dtype must match unless `dst` is u8) or into a new
   * HostTensor. Reads go straight into dst's memory in chunks; `signal` aborts between chunks.
   */
  async read(name: string, dst?: HostTensor, options: { signal?: AbortSignal } = {}): Promise<HostTensor> {
    const info = this.tensor(name);
    const fh = this.#fh;
    if (!fh) throw new InvalidArgumentError(`${this.path}: the file was closed`);
    const out = dst ?? newHostTensorFor(info);
    if (!(out instanceof HostTensor)) throw new InvalidArgumentError(`dst must be a HostTensor, received ${describe(dst)}`);
    const want = TO_DTYPE[info.dtype];
    if (out.dtype !== 'u8' && out.dtype !== want) {
      throw new InvalidArgumentError(`dst.dtype must be ${want ?? 'u8'} for ${name} (${info.dtype}), received ${out.dtype}`);
    }
    if (out.byteLength !== info.byteLength) {
      throw new InvalidArgumentError(`dst must hold ${info.byteLength} bytes for ${name} [${info.shape.join(', ')}] ${info.dtype}, received ${out.byteLength}`);
    }
    const d = out.data;
    const bytes = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    for (let done = 0; done < bytes.byteLength; ) {
      options.signal?.throwIfAborted();
      const len = Math.min(READ_CHUNK, bytes.byteLength - done);
      await readFully(fh, bytes.subarray(done, done + len), info.filePosition + done, this.path, name);
      done += len;
    }
    return out;
  }

  async close(): Promise<void> {
    const fh = this.#fh;
    this.#fh = undefined;
    await fh?.close();
  }
}

function newHostTensorFor(info: TensorInfo): HostTensor {
  const dt = TO_DTYPE[info.dtype];
  if (!dt) {
    throw new InvalidArgumentError(`${info.file} [${info.name}]: dtype ${info.dtype} has no HostTensor type; pass a u8 HostTensor of ${info.byteLength} bytes`);
  }
  return new HostTensor(dt, info.shape);
}

async function readFully(fh: fs.promises.FileHandle, buf: Uint8Array, position: number, file: string, tensor?: string): Promise<void> {
  let off = 0;
  while (off < buf.byteLength) {
    const { bytesRead } = await fh.read(buf, off, buf.byteLength - off, position + off);
    if (bytesRead === 0) fail(file, tensor, `truncated: unexpected end of file at byte ${position + off}`);
    off += bytesRead;
  }
}

function parseHeader(hb: Buffer, file: string, dataStart: number, fileSize: number): { metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  let json: unknown;
  try {
    json = JSON.parse(hb.toString('utf8'));
  } catch (e) {
    fail(file, undefined, `header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) fail(file, undefined, 'header must be a JSON object');
  const metadata: Record<string, string> = {};
  const list: TensorInfo[] = [];
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null) fail(file, undefined, '__metadata__ must be an object of strings');
      for (const [k, mv] of Object.entries(v as Record<string, unknown>)) if (typeof mv === 'string') metadata[k] = mv;
      continue;
    }
    if (typeof v !== 'object' || v === null) fail(file, name, 'entry must be an object');
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e.dtype !== 'string' || !(e.dtype in SAFETENSORS_DTYPE_SIZE)) fail(file, name, `unknown dtype ${describe(e.dtype)}`);
    const dtype = e.dtype as SafetensorsDType;
    if (!Array.isArray(e.shape) || e.shape.some((x) => typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0)) {
      fail(file, name, `shape must be an array of non-negative integers, received ${describe(e.shape)}`);
    }
    const shape = e.shape as number[];
    const o = e.data_offsets;
    if (!Array.isArray(o) || o.length !== 2 || o.some((x) => typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) || o[0] > o[1]) {
      fail(file, name, `data_offsets must be [begin, end] with 0 <= begin <= end, received ${describe(o)}`);
    }
    const [begin, end] = o as [number, number];
    const need = shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_SIZE[dtype];
    if (end - begin !== need) fail(file, name, `shape [${shape.join(', ')}] x ${dtype} needs ${need} bytes but data_offsets span ${end - begin}`);
    if (dataStart + end > fileSize) fail(file, name, `truncated: data ends at byte ${dataStart + end} but the file has ${fileSize} bytes`);
    list.push({ name, dtype, shape, filePosition: dataStart + begin, byteLength: need, file });
  }
  // Offsets must tile the data region exactly: no overlap, no gap, nothing after the last tensor.
  list.sort((a, b) => a.filePosition - b.filePosition || a.byteLength - b.byteLength);
  let expect = dataStart;
  let prev: TensorInfo | undefined;
  for (const t of list) {
    if (t.filePosition < expect) fail(file, t.name, `data_offsets overlap those of ${prev?.name}`);
    if (t.filePosition > expect) fail(file, t.name, `gap of ${t.filePosition - expect} bytes before this tensor's data`);
    expect = t.filePosition + t.byteLength;
    prev = t;
  }
  if (expect !== fileSize) fail(file, undefined, `${fileSize - expect} bytes after the last tensor's data`);
  return { metadata, tensors: new Map(list.map((t) => [t.name, t])) };
}

/** A tensor to write: a HostTensor, or raw bytes with a safetensors dtype (for dtypes without a HostTensor). */
export type WritableTensor = HostTensor | { dtype: SafetensorsDType; shape: number[]; bytes: Uint8Array };

function rawOf(t: WritableTensor): { dtype: SafetensorsDType; shape: number[]; bytes: Uint8Array } {
  if (t instanceof HostTensor) {
    const d = t.data;
    return { dtype: FROM_DTYPE[t.dtype], shape: [...t.shape], bytes: new Uint8Array(d.buffer, d.byteOffset, d.byteLength) };
  }
  const need = t.shape.reduce((a, b) => a * b, 1) * SAFETENSORS_DTYPE_SIZE[t.dtype];
  if (t.bytes.byteLength !== need) throw new InvalidArgumentError(`bytes must hold ${need} bytes for [${t.shape.join(', ')}] ${t.dtype}, received ${t.bytes.byteLength}`);
  return t;
}

/** Writes one .safetensors file (header padded with spaces to 8 bytes, tensors in the given order). */
export async function writeSafetensors(file: string, tensors: ReadonlyMap<string, WritableTensor> | Record<string, WritableTensor>, metadata?: Record<string, string>): Promise<number> {
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  const raws = entries.map(([name, t]) => {
    const r = rawOf(t);
    header[name] = { dtype: r.dtype, shape: r.shape, data_offsets: [off, off + r.bytes.byteLength] };
    off += r.bytes.byteLength;
    return r;
  });
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((Buffer.byteLength(json) + 8) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const fh = await fs.promises.open(file, 'w');
  try {
    await fh.write(len);
    await fh.write(Buffer.from(json, 'utf8'));
    for (const r of raws) await fh.write(r.bytes);
  } finally {
    await fh.close();
  }
  return 8 + Buffer.byteLength(json) + off;
}

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/**
 * Writes a checkpoint folder: `model.safetensors` when everything fits one shard, else
 * `model-0000i-of-0000n.safetensors` shards of at most `maxShardBytes` (a tensor is never split) plus the index.
 */
export async function writeCheckpoint(dir: string, tensors: ReadonlyMap<string, WritableTensor> | Record<string, WritableTensor>, options: { maxShardBytes?: number } = {}): Promise<string[]> {
  const max = options.maxShardBytes ?? 5 * 2 ** 30;
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  const shards: Array<Array<[string, WritableTensor]>> = [[]];
  let size = 0;
  let total = 0;
  for (const [name, t] of entries) {
    const b = rawOf(t).bytes.byteLength;
    if (size > 0 && size + b > max) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1]!.push([name, t]);
    size += b;
    total += b;
  }
  await fs.promises.mkdir(dir, { recursive: true });
  if (shards.length === 1) {
    await writeSafetensors(path.join(dir, SINGLE_FILE), new Map(shards[0]), { format: 'pt' });
    return [SINGLE_FILE];
  }
  const n = shards.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < n; i++) {
    const f = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
    await writeSafetensors(path.join(dir, f), new Map(shards[i]), { format: 'pt' });
    for (const [name] of shards[i]!) weightMap[name] = f;
    files.push(f);
  }
  await fs.promises.writeFile(path.join(dir, INDEX_FILE), `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
  return files;
}

/** A checkpoint folder: one file or shards behind the index; tensors by name across all shards. */
export class Checkpoint {
  readonly dir: string;
  readonly files: readonly SafetensorsFile[];
  readonly #byName: Map<string, SafetensorsFile>;

  private constructor(dir: string, files: SafetensorsFile[], byName: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.files = files;
    this.#byName = byName;
  }

  /** Opens `dir` (sharded via model.safetensors.index.json, or model.safetensors), validating every header. */
  static async open(dir: string, options: { maxHeaderBytes?: number } = {}): Promise<Checkpoint> {
    const indexPath = path.join(dir, INDEX_FILE);
    const opened: SafetensorsFile[] = [];
    try {
      const byName = new Map<string, SafetensorsFile>();
      if (fs.existsSync(indexPath)) {
        let index: { weight_map?: Record<string, unknown> };
        try {
          index = JSON.parse(await fs.promises.readFile(indexPath, 'utf8')) as typeof index;
        } catch (e) {
          fail(indexPath, undefined, `not valid JSON: ${(e as Error).message}`);
        }
        const wm = index.weight_map;
        if (typeof wm !== 'object' || wm === null) fail(indexPath, undefined, 'weight_map is missing');
        const shardFiles = new Map<string, string>(); // shard -> first tensor naming it
        for (const [name, f] of Object.entries(wm)) {
          if (typeof f !== 'string' || f.includes('/') || f.includes('\\') || f === '..') fail(indexPath, name, `bad shard name ${describe(f)}`);
          if (!shardFiles.has(f)) shardFiles.set(f, name);
        }
        const shards = new Map<string, SafetensorsFile>();
        for (const [f, firstTensor] of shardFiles) {
          const p = path.join(dir, f);
          if (!fs.existsSync(p)) fail(p, firstTensor, 'shard named by the index is missing');
          const sf = await SafetensorsFile.open(p, options);
          opened.push(sf);
          shards.set(f, sf);
        }
        for (const [name, f] of Object.entries(wm as Record<string, string>)) {
          const sf = shards.get(f)!;
          if (!sf.tensors.has(name)) fail(sf.path, name, 'listed in the index but absent from this shard');
          byName.set(name, sf);
        }
      } else {
        const p = path.join(dir, SINGLE_FILE);
        if (!fs.existsSync(p)) fail(dir, undefined, `neither ${INDEX_FILE} nor ${SINGLE_FILE} exists`);
        const sf = await SafetensorsFile.open(p, options);
        opened.push(sf);
        for (const name of sf.tensors.keys()) byName.set(name, sf);
      }
      return new Checkpoint(dir, opened, byName);
    } catch (e) {
      await Promise.all(opened.map((f) => f.close()));
      throw e;
    }
  }

  /** Every tensor name. */
  names(): string[] {
    return [...this.#byName.keys()];
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  tensor(name: string): TensorInfo {
    const f = this.#byName.get(name);
    if (!f) fail(this.dir, name, 'no such tensor in this checkpoint');
    return f.tensor(name);
  }

  /** Reads tensor `name` (see SafetensorsFile.read). Every failure rejects. */
  async read(name: string, dst?: HostTensor, options: { signal?: AbortSignal } = {}): Promise<HostTensor> {
    const f = this.#byName.get(name);
    if (!f) fail(this.dir, name, 'no such tensor in this checkpoint');
    return f.read(name, dst, options);
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}

