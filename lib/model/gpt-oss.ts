/**
 * gpt-oss experts: stored stacked per layer, in one of two layouts, turned at load into the ExpertStore's
 * per-expert [gate | up | down] bf16 (nn.Linear layouts) plus f32 biases kept on the host.
 *
 *   bf16 (transformers' dequantized save):  mlp.experts.gate_up_proj [E, H, 2I]   (x @ W; column 2i gate_i, 2i+1 up_i)
 *                                           mlp.experts.down_proj    [E, I, H]
 *   MXFP4 (the released checkpoints):       mlp.experts.gate_up_proj_blocks [E, 2I, H/32, 16] u8 + _scales [E, 2I, H/32] u8
 *                                           mlp.experts.down_proj_blocks    [E, H, I/32, 16] u8 + _scales [E, H, I/32] u8
 *                                           (rows are outputs: row 2i gate_i, 2i+1 up_i; each byte holds two e2m1
 *                                           values, low nibble first; a block of 32 shares the scale 2^(s - 127))
 *   both:                                   mlp.experts.gate_up_proj_bias [E, 2I] (interleaved), down_proj_bias [E, H]
 * e2m1 values times a power of two are exact in bf16, so MXFP4 weights dequantize losslessly.
 */
import { f32ToBf16Bits } from '../dtype.js';
import { CheckpointFormatError } from '../errors.js';
import type { ExpertStore } from '../residency/expert-store.js';
import { HostTensor } from '../tensor.js';
import type { ModelConfig } from './config.js';
import type { Checkpoint, TensorInfo } from './safetensors.js';

/** e2m1 code -> value (sign bit 3). */
export const FP4_VALUES = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6] as const;

export interface GptOssExpertNames {
  gateUp: string;
  gateUpBias: string;
  down: string;
  downBias: string;
}

export function gptOssExpertNames(layer: number): GptOssExpertNames {
  const m = `model.layers.${layer}.mlp.experts`;
  return { gateUp: `${m}.gate_up_proj`, gateUpBias: `${m}.gate_up_proj_bias`, down: `${m}.down_proj`, downBias: `${m}.down_proj_bias` };
}

/** One expert's f32 biases (gate [I], up [I], down [H]). */
export interface ExpertBiases {
  gateBias: HostTensor<'f32'>;
  upBias: HostTensor<'f32'>;
  downBias: HostTensor<'f32'>;
}

function expectShape(ckpt: Checkpoint, name: string, shape: readonly number[], dtypes: readonly string[]): TensorInfo {
  if (!ckpt.has(name)) throw new CheckpointFormatError(ckpt.dir, name, `missing: gpt-oss experts need it (shape [${shape.join(', ')}])`);
  const info = ckpt.tensor(name);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new CheckpointFormatError(ckpt.dir, name, `shape [${info.shape.join(', ')}] does not match the config, which implies [${shape.join(', ')}]`);
  }
  if (!dtypes.includes(info.dtype)) throw new CheckpointFormatError(ckpt.dir, name, `dtype ${info.dtype} is not supported here (${dtypes.join(', ')})`);
  return info;
}

/** 'bf16' or 'mxfp4' for layer `l` (checks every tensor's shape and dtype). */
export function gptOssLayout(ckpt: Checkpoint, cfg: ModelConfig, l: number): 'bf16' | 'mxfp4' {
  const n = gptOssExpertNames(l);
  const E = cfg.numExperts;
  const H = cfg.hiddenSize;
  const I = cfg.moeIntermediateSize;
  const FLOAT = ['BF16', 'F16', 'F32'];
  expectShape(ckpt, n.gateUpBias, [E, 2 * I], FLOAT);
  expectShape(ckpt, n.downBias, [E, H], FLOAT);
  if (ckpt.has(`${n.gateUp}_blocks`)) {
    if (H % 32 !== 0 || I % 32 !== 0) throw new CheckpointFormatError(ckpt.dir, `${n.gateUp}_blocks`, `MXFP4 needs hidden and intermediate sizes divisible by 32, received ${H} and ${I}`);
    expectShape(ckpt, `${n.gateUp}_blocks`, [E, 2 * I, H / 32, 16], ['U8']);
    expectShape(ckpt, `${n.gateUp}_scales`, [E, 2 * I, H / 32], ['U8']);
    expectShape(ckpt, `${n.down}_blocks`, [E, H, I / 32, 16], ['U8']);
    expectShape(ckpt, `${n.down}_scales`, [E, H, I / 32], ['U8']);
    return 'mxfp4';
  }
  expectShape(ckpt, n.gateUp, [E, H, 2 * I], FLOAT);
  expectShape(ckpt, n.down, [E, I, H], FLOAT);
  return 'bf16';
}

/**
 * f32 rows -> MXFP4 (round to the nearest e2m1 value after scaling each block of 32 by 2^e, e the smallest that
 * brings the block's largest magnitude to <= 6). For writing test and benchmark checkpoints.
 */
export function quantizeMxfp4(values: ArrayLike<number>, rows: number, cols: number): { blocks: Uint8Array; scales: Uint8Array } {
  const nb = cols / 32;
  const blocks = new Uint8Array(rows * nb * 16);
  const scales = new Uint8Array(rows * nb);
  const code = (v: number): number => {
    const a = Math.abs(v);
    let best = 0;
    for (let c = 1; c < 8; c++) if (Math.abs(FP4_VALUES[c]! - a) < Math.abs(FP4_VALUES[best]! - a)) best = c;
    return best === 0 ? 0 : v < 0 ? best | 8 : best;
  };
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      let m = 0;
      for (let i = 0; i < 32; i++) m = Math.max(m, Math.abs(values[r * cols + b * 32 + i]!));
      const e = m === 0 ? 0 : Math.max(-127, Math.min(127, Math.ceil(Math.log2(m / 6))));
      scales[r * nb + b] = e + 127;
      const inv = 2 ** -e;
      for (let i = 0; i < 16; i++) {
        const lo = code(values[r * cols + b * 32 + 2 * i]! * inv);
        const hi = code(values[r * cols + b * 32 + 2 * i + 1]! * inv);
        blocks[(r * nb + b) * 16 + i] = lo | (hi << 4);
      }
    }
  }
  return { blocks, scales };
}

/**
 * Fills `store` with every gpt-oss expert (de-interleaved, transposed to nn.Linear layouts, bf16) and returns the
 * biases: [moe layer index][expert].
 */
export async function loadGptOssExperts(
  ckpt: Checkpoint,
  cfg: ModelConfig,
  store: ExpertStore,
  options: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
): Promise<ExpertBiases[][]> {
  const E = cfg.numExperts;
  const H = cfg.hiddenSize;
  const I = cfg.moeIntermediateSize;
  const op = options.signal ? { signal: options.signal } : {};
  const biases: ExpertBiases[][] = [];
  let done = 0;
  for (const l of cfg.moeLayers) {
    const n = gptOssExpertNames(l);
    const layout = gptOssLayout(ckpt, cfg, l);
    const gub = (await ckpt.read(n.gateUpBias, undefined, op)).toFloat32(); // [E, 2I]
    const db = (await ckpt.read(n.downBias, undefined, op)).toFloat32(); // [E, H]
    // per expert, output row r of gate_up (r = 2i gate_i, 2i + 1 up_i) and of down, as bf16 bits
    let gateUpRow: (e: number, r: number, dst: Uint16Array, off: number) => void;
    let downRow: (e: number, h: number, dst: Uint16Array, off: number) => void;
    if (layout === 'mxfp4') {
      const raw = async (name: string) => (await ckpt.read(name, undefined, op)).data as Uint8Array;
      const gb = await raw(`${n.gateUp}_blocks`);
      const gs = await raw(`${n.gateUp}_scales`);
      const dbk = await raw(`${n.down}_blocks`);
      const ds = await raw(`${n.down}_scales`);
      const row = (blocks: Uint8Array, scales: Uint8Array, r: number, cols: number, dst: Uint16Array, off: number) => {
        const nb = cols / 32;
        for (let b = 0; b < nb; b++) {
          const scale = 2 ** (scales[r * nb + b]! - 127);
          for (let i = 0; i < 16; i++) {
            const byte = blocks[(r * nb + b) * 16 + i]!;
            dst[off + b * 32 + 2 * i] = f32ToBf16Bits(FP4_VALUES[byte & 15]! * scale);
            dst[off + b * 32 + 2 * i + 1] = f32ToBf16Bits(FP4_VALUES[byte >> 4]! * scale);
          }
        }
      };
      gateUpRow = (e, r, dst, off) => row(gb, gs, e * 2 * I + r, H, dst, off);
      downRow = (e, h, dst, off) => row(dbk, ds, e * H + h, I, dst, off);
    } else {
      const bits = async (name: string): Promise<Uint16Array> => {
        const t = await ckpt.read(name, undefined, op);
        return (t.dtype === 'bf16' ? t : HostTensor.from('bf16', t.shape, t.toFloat32())).data as Uint16Array;
      };
      const gu = await bits(n.gateUp); // [E, H, 2I]: column r of expert e is output row r
      const dn = await bits(n.down); // [E, I, H]
      gateUpRow = (e, r, dst, off) => {
        for (let h = 0; h < H; h++) dst[off + h] = gu[(e * H + h) * 2 * I + r]!;
      };
      downRow = (e, h, dst, off) => {
        for (let i = 0; i < I; i++) dst[off + i] = dn[(e * I + i) * H + h]!;
      };
    }
    const layer: ExpertBiases[] = [];
    // one expert's projections in nn.Linear layout, reused for every expert: store.write copies or packs them
    const gt = new HostTensor('bf16', [I, H]);
    const ut = new HostTensor('bf16', [I, H]);
    const dt = new HostTensor('bf16', [H, I]);
    for (let e = 0; e < E; e++) {
      options.signal?.throwIfAborted();
      const g = gt.data; // [I, H]
      const u = ut.data; // [I, H]
      const d = dt.data; // [H, I]
      for (let i = 0; i < I; i++) {
        gateUpRow(e, 2 * i, g, i * H);
        gateUpRow(e, 2 * i + 1, u, i * H);
      }
      for (let h = 0; h < H; h++) downRow(e, h, d, h * I);
      await store.write(l, e, 'gate', gt, op);
      await store.write(l, e, 'up', ut, op);
      await store.write(l, e, 'down', dt, op);
      const gateBias = new HostTensor('f32', [I]);
      const upBias = new HostTensor('f32', [I]);
      for (let i = 0; i < I; i++) {
        gateBias.data[i] = gub[e * 2 * I + 2 * i]!;
        upBias.data[i] = gub[e * 2 * I + 2 * i + 1]!;
      }
      layer.push({ gateBias, upBias, downBias: HostTensor.from('f32', [H], db.subarray(e * H, (e + 1) * H)) });
      options.onProgress?.(++done, cfg.moeLayers.length * E);
    }
    biases.push(layer);
  }
  return biases;
}
