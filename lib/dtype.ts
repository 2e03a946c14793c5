/**
 * Element types and the JS-side conversions. bf16 and f16 travel as raw bits in a Uint16Array (JS has no
 * bfloat16, Node 20 no Float16Array); conversions round to nearest even, exactly like the native kernels.
 *
 * @example
 * const bits = f32ToBf16(new Float32Array([1, 3.14159]))  // Uint16Array [0x3f80, 0x4049]
 * bf16ToF32(bits)                                         // Float32Array [1, 3.140625]
 */
import { InvalidArgumentError } from './errors.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u8';
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u8'];

/** The JS array type that holds each dtype's elements. */
export interface DTypeArrays {
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  i32: Int32Array;
  u8: Uint8Array;
}
export type ArrayFor<D extends DType> = DTypeArrays[D];
export type AnyTypedArray = Float32Array | Uint16Array | Int32Array | Uint8Array;

/** Numeric codes shared with native code (cpp/core/dtype.h). */
export const DTYPE_CODE: Record<DType, number> = { f32: 0, f16: 1, bf16: 2, i32: 3, u8: 4 };
export const DTYPE_SIZE: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u8: 1 };

type ArrayCtor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => AnyTypedArray;
const CTORS: Record<DType, ArrayCtor & { new (length: number): AnyTypedArray }> = {
  f32: Float32Array,
  f16: Uint16Array,
  bf16: Uint16Array,
  i32: Int32Array,
  u8: Uint8Array,
};

export function isDType(v: unknown): v is DType {
  return typeof v === 'string' && (DTYPES as readonly string[]).includes(v);
}

export function checkDType(v: unknown, what: string, allowed: readonly DType[] = DTYPES): DType {
  if (!isDType(v) || !allowed.includes(v)) {
    throw new InvalidArgumentError(`${what} must be one of ${allowed.join(', ')}, received ${describe(v)}`);
  }
  return v;
}

/** A new zeroed array for `length` elements of `dtype`. */
export function allocArray<D extends DType>(dtype: D, length: number): ArrayFor<D> {
  return new CTORS[dtype](length) as ArrayFor<D>;
}

/** A view of `length` elements of `dtype` over `buffer` at `byteOffset`. */
export function viewArray<D extends DType>(dtype: D, buffer: ArrayBufferLike, byteOffset: number, length: number): ArrayFor<D> {
  return new CTORS[dtype](buffer, byteOffset, length) as ArrayFor<D>;
}

/** True when `arr` is the array type that holds `dtype`. */
export function arrayMatches(dtype: DType, arr: unknown): boolean {
  return arr instanceof CTORS[dtype];
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 -> bf16 bits, round to nearest even; NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

/** f32 -> IEEE half bits, round to nearest even, with subnormals, overflow to Inf and NaN kept. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00 | ((a >>> 13) & 0x3ff);
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a < 0x38800000) {
    if (a < 0x33000000) return sign;
    const e = a >>> 23;
    const m = (a & 0x7fffff) | 0x800000;
    const shift = 126 - e;
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (r & 1) !== 0)) r++;
    return sign | r;
  }
  const r = (a - 0x38000000) >>> 0;
  return sign | (((r + 0xfff + ((r >>> 13) & 1)) >>> 13) & 0x7fff);
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** Converts a Float32Array (or number array) to bf16 bits. */
export function f32ToBf16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToBf16Bits(values[i]!);
  return out;
}

export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const o32 = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) o32[i] = bits[i]! << 16;
  return out;
}

export function f32ToF16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32ToF16Bits(values[i]!);
  return out;
}

export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = f16BitsToF32(bits[i]!);
  return out;
}

/** Short description of a received value for error messages. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return v.length <= 8 ? `[${v.map(describe).join(', ')}]` : `an array of ${v.length}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name} of ${v.byteLength} bytes`;
  if (typeof v === 'function') return 'a function';
  return `an object (${(v as object).constructor?.name ?? 'Object'})`;
}
