// The addon's exports, and nothing else: every binding lives in cpp/napi (memory, streams, info) or cpp/ops (one
// file per op). lib/native.ts is the one place that loads this and types its surface.
#include <napi.h>

#include "napi/addon_data.h"
#include "napi/expert_table.h"
#include "napi/memory.h"
#include "napi/stream.h"

namespace moe::js {
Napi::Value Info(const Napi::CallbackInfo& info);
Napi::Value CudaMemInfo(const Napi::CallbackInfo& info);
Napi::Value Copy(const Napi::CallbackInfo& info);
Napi::Value Convert(const Napi::CallbackInfo& info);
Napi::Value Add(const Napi::CallbackInfo& info);
Napi::Value Gemm(const Napi::CallbackInfo& info);
Napi::Value PackWeights(const Napi::CallbackInfo& info);
Napi::Value RouterTopK(const Napi::CallbackInfo& info);
Napi::Value MoeAlign(const Napi::CallbackInfo& info);
Napi::Value MoeExperts(const Napi::CallbackInfo& info);
Napi::Value MoeCombine(const Napi::CallbackInfo& info);
Napi::Value Attention(const Napi::CallbackInfo& info);
Napi::Value GatherRows(const Napi::CallbackInfo& info);
Napi::Value ScatterRows(const Napi::CallbackInfo& info);
Napi::Value ArgmaxRows(const Napi::CallbackInfo& info);
Napi::Value ReadProbe(const Napi::CallbackInfo& info);
Napi::Value DotProbe(const Napi::CallbackInfo& info);
Napi::Value GroupedGemm(const Napi::CallbackInfo& info);
Napi::Value Rope(const Napi::CallbackInfo& info);
Napi::Value SampleRows(const Napi::CallbackInfo& info);
Napi::Value RmsNorm(const Napi::CallbackInfo& info);
}  // namespace moe::js

namespace {

// Never frees: stream threads and CUDA callbacks may still post completions while an environment is torn
// down, and they reach the channel through this struct. One small struct per environment.
void KeepAddonData(Napi::Env, moe::js::AddonData*) {}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace moe::js;
  auto* data = new AddonData();
  env.SetInstanceData<AddonData, KeepAddonData>(data);
  data->completion = CompletionTsfn::New(env, "moe-offload completion", 0, 1);
  data->completion.Unref(env);
  env.AddCleanupHook([data] {
    data->closing = true;
    data->completion.Abort();
  });

  Napi::Function memory = MemoryWrap::Init(env);
  Napi::Function stream = StreamWrap::Init(env);
  Napi::Function event = EventWrap::Init(env);
  Napi::Function cancel = CancelWrap::Init(env);
  data->memory_ctor = Napi::Persistent(memory);

  exports.Set("Memory", memory);
  exports.Set("Stream", stream);
  exports.Set("Event", event);
  exports.Set("CancelToken", cancel);
  exports.Set("HostRegistration", HostRegistrationWrap::Init(env));
  exports.Set("ExpertTable", ExpertTableWrap::Init(env));
  exports.Set("info", Napi::Function::New<Info>(env, "info"));
  exports.Set("hugePageMin", Napi::Number::New(env, static_cast<double>(kHugeMin)));
  exports.Set("cudaMemInfo", Napi::Function::New<CudaMemInfo>(env, "cudaMemInfo"));
  exports.Set("memoryStats", Napi::Function::New<MemoryStats>(env, "memoryStats"));
  exports.Set("allocAsync", Napi::Function::New<AllocAsync>(env, "allocAsync"));
  exports.Set("prefaultAsync", Napi::Function::New<PrefaultAsync>(env, "prefaultAsync"));
  exports.Set("copy", Napi::Function::New<Copy>(env, "copy"));
  exports.Set("convert", Napi::Function::New<Convert>(env, "convert"));
  exports.Set("add", Napi::Function::New<Add>(env, "add"));
  exports.Set("gemm", Napi::Function::New<Gemm>(env, "gemm"));
  exports.Set("packWeights", Napi::Function::New<PackWeights>(env, "packWeights"));
  exports.Set("routerTopK", Napi::Function::New<RouterTopK>(env, "routerTopK"));
  exports.Set("moeAlign", Napi::Function::New<MoeAlign>(env, "moeAlign"));
  exports.Set("moeExperts", Napi::Function::New<MoeExperts>(env, "moeExperts"));
  exports.Set("moeCombine", Napi::Function::New<MoeCombine>(env, "moeCombine"));
  exports.Set("attention", Napi::Function::New<Attention>(env, "attention"));
  exports.Set("gatherRows", Napi::Function::New<GatherRows>(env, "gatherRows"));
  exports.Set("scatterRows", Napi::Function::New<ScatterRows>(env, "scatterRows"));
  exports.Set("readProbe", Napi::Function::New<ReadProbe>(env, "readProbe"));
  exports.Set("dotProbe", Napi::Function::New<DotProbe>(env, "dotProbe"));
  exports.Set("groupedGemm", Napi::Function::New<GroupedGemm>(env, "groupedGemm"));
  exports.Set("rope", Napi::Function::New<Rope>(env, "rope"));
  exports.Set("sampleRows", Napi::Function::New<SampleRows>(env, "sampleRows"));
  exports.Set("argmaxRows", Napi::Function::New<ArgmaxRows>(env, "argmaxRows"));
  exports.Set("rmsNorm", Napi::Function::New<RmsNorm>(env, "rmsNorm"));
  return exports;
}

}  // namespace

NODE_API_MODULE(moe_offload, Init)
