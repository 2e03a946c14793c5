/**
 * moe-offload: run Mixture-of-Experts LLMs that do not fit in GPU memory, from TypeScript.
 *
 * @example
 * import { openBackend, HostTensor, info } from 'moe-offload';
 * console.log(info().backend);
 * const be = openBackend();
 */
export { info, formatInfo, version, type Info } from './info.js';
export {
  Backend,
  openBackend,
  listBackends,
  cudaUnavailableReason,
  CPU_ISAS,
  type BackendKind,
  type BackendOptions,
  type BackendStatus,
  type CpuIsa,
  type OpOptions,
  type OpTiming,
  type AttentionParams,
  type RopeParams,
} from './backend.js';
export { ropeParameters, ropeFromConfig, ropeScalingFromHf, yarnSoftmaxScale, type RopeScaling, type RopeParameters } from './rope.js';
export { KvCache, type KvCacheOptions, type KvBatch } from './kv/cache.js';
export { HostTensor, PinnedBuffer, DeviceTensor, PackedTensor, HostRegistration, MAX_VIEW_BYTES, checkShape, numelOf, packedNumel, type Shape, type Tensor, type Placement } from './tensor.js';
export { Stream, Event } from './stream.js';
export { ExpertTable, type ExpertWeights, type ExpertWeightsStacked, type MoeActivation } from './moe.js';
export {
  type DType,
  type ArrayFor,
  DTYPES,
  DTYPE_SIZE,
  f32ToBf16,
  bf16ToF32,
  f32ToF16,
  f16ToF32,
  f32ToBf16Bits,
  bf16BitsToF32,
  f32ToF16Bits,
  f16BitsToF32,
} from './dtype.js';
export {
  MoeOffloadError,
  InvalidArgumentError,
  BackendUnavailableError,
  OutOfMemoryError,
  CudaError,
  DisposedError,
  NativeBindingError,
  InternalError,
  UnsupportedModelError,
  CheckpointFormatError,
  type ErrorCode,
} from './errors.js';
export { memoryStats } from './stats.js';
export {
  parseModelConfig,
  expertTensorNames,
  expertBytes,
  SUPPORTED_MODEL_TYPES,
  type ModelConfig,
  type ModelFamily,
  type RouterConfig,
  type MlaConfig,
} from './model/config.js';
export {
  Checkpoint,
  SafetensorsFile,
  writeSafetensors,
  writeCheckpoint,
  SAFETENSORS_DTYPE_SIZE,
  type SafetensorsDType,
  type TensorInfo,
  type WritableTensor,
} from './model/safetensors.js';
export { ModelTokenizer, type ChatMessage, type StreamDecoder } from './model/tokenizer.js';
export { demo, type DemoOptions } from './demo.js';
export { makeModel, presetOf, type MakeModelOptions, type MadeModel } from './model/make-model.js';
export { PRESETS, PRESET_NAMES, type PresetName, type ModelPreset } from './model/presets.js';
export {
  loadModel,
  MoeModel,
  type LoadModelOptions,
  type LoadProgress,
  type ExpertMode,
  type Prompt,
  type GenerateOptions,
  type GenerateResult,
  type GenerateStats,
  type FinishReason,
  type TokenChunk,
  type GenerationStream,
} from './engine/model.js';
export type { StepTimes, StepRouting } from './engine/forward.js';
// throughput mode's performance model (MoE-Lens) and planning
export { planRun, workloadThroughput, type RunPlan, type RunPlanOptions } from './batching/plan.js';
export { readWorkload, workloadShape, type Workload, type WorkloadShape } from './batching/workload.js';
export { mergeProfiles, profileModel } from './batching/profile.js';
export { chooseBatch, predictDecode, predictPrefill, type ModelProfile, type DecodePrediction, type PrefillPrediction } from './batching/perf-model.js';
export { expertSlotsFor, stepArenaNeed, hostKvLimit, kvTokensFor, kvBytesFor } from './batching/memory.js';
export type { BatchOptions, BatchRequestOptions, BatchResult } from './engine/batch.js';
export { Sampler, sampleRows, type SamplingOptions } from './engine/sampler.js';
export { buildByteLevelBpe, byteToUnicode, type ByteLevelBpeOptions, type ByteLevelBpe } from './model/tokenizer-gen.js';
export { DEFAULT_CORPUS, CHATML_TEMPLATE, INST_TEMPLATE } from './model/tokenizer-corpus.js';
export {
  TransferEngine,
  Transfer,
  type TransferEngineOptions,
  type TransferOptions,
  type TransferPriority,
  type TransferStats,
} from './residency/transfer.js';
export { ExpertStore, type ExpertStoreOptions, type ExpertViews } from './residency/expert-store.js';
export { SlotPool, type SlotViews } from './residency/slot-pool.js';
export {
  StagingRing,
  StagedTensor,
  StagedUpload,
  type StagingRingOptions,
  type StagingDownloadOptions,
  type StagingUploadOptions,
  type StagingAfter,
  type StagingStats,
} from './residency/staging.js';
export type { KernelTier, NativeMemoryStats, MemoryCount } from './native.js';
export * from './cache/index.js';
