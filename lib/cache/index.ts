/** Expert cache, FineMoE predictor, routing traces and the trace simulator (public surface of lib/cache). */
export { ExpertCache, type ExpertLease, type CacheStats, type ExpertCacheOptions } from './expert-cache.js';
export { LruPolicy, LfuPolicy, ProbabilityPolicy, BeladyPolicy, type EvictionPolicy, type UsageForecast } from './policy.js';
export { ExpertMapStore, FineMoePredictor, ReuseCalibrator, markTopK, selectByCumulative, type ExpertMapStoreOptions, type FineMoePredictorOptions, type LayerPrediction, type MapMatch, type KnownSimilarities } from './finemoe.js';
export { serializeTrace, parseTrace, generateTrace, routingStatsFromJson, calibrationReport, anchorLayers, type RoutingTrace, type TraceRequest, type RoutingStats, type GenerateTraceOptions, type CalibrationRow } from './trace.js';
export { DeviceSlotIndexPool, StoreTransferEngine, residencyExpertCache, type ResidencyCacheOptions } from './residency.js';
export { simulate, ActivationMatrixPredictor, SIM_POLICIES, type SimPolicy, type SimOptions, type SimResult } from './simulator.js';
export { ArraySlotPool, expertKey, systemClock, Rng, type SlotPool as CacheSlotPool, type TransferEngine as CacheTransferEngine, type FetchRequest, type Clock } from './types.js';
