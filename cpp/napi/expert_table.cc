// See expert_table.h.
#include "expert_table.h"

#include <algorithm>
#include <string>

#include "cpu/pack_weights.h"
#include "tensor_arg.h"

namespace moe::js {

namespace {

// Marks ExpertTable objects (napi_type_tag_object), so from() never unwraps some other wrapped object.
constexpr napi_type_tag kExpertTableTag = {0x6d6f652d6f66666cULL, 0x657870742d746162ULL};

const char* const kArgKeys[6] = {"gate", "up", "down", "gateBias", "upBias", "downBias"};

}  // namespace

std::string ExpertEntry::name(int arg) const {
  static const char* const stacked_names[6] = {"gateUp", "gateUp", "down", "gateUpBias", "gateUpBias", "downBias"};
  return "experts[" + std::to_string(id) + "]." + (stacked ? stacked_names[arg] : kArgKeys[arg]);
}

void ExpertTableSnapshot::lease_into(Napi::Env env, AsyncOp& op, const char* op_name) const {
  auto held = std::make_shared<std::vector<std::shared_ptr<Memory::Lease>>>();
  held->reserve(memories.size());
  for (const MemUse& m : memories) {
    // Memory::dispose runs on the JS thread only: nothing can dispose it between this check and the lease.
    if (m.memory->disposed())
      throw_error(env, ErrorCode::Disposed, std::string(op_name) + ": " + m.entry->name(m.arg) + ": its memory was disposed");
    held->push_back(m.memory->lease());
  }
  for (const BufUse& b : buffers) {
    napi_value ab = nullptr;
    bool detached = false;
    void* data = nullptr;
    size_t length = 0;
    if (napi_get_reference_value(env, b.buf->ref.operator napi_ref(), &ab) != napi_ok || ab == nullptr ||
        napi_is_detached_arraybuffer(env, ab, &detached) != napi_ok ||
        (!detached && napi_get_arraybuffer_info(env, ab, &data, &length) != napi_ok))
      throw_error(env, ErrorCode::Internal, std::string(op_name) + ": " + b.entry->name(b.buf->arg) + ": cannot read its ArrayBuffer");
    if (detached || data != b.buf->data || length < b.end)
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string(op_name) + ": " + b.entry->name(b.buf->arg) +
                      ": its ArrayBuffer was detached (transferred) or resized since ExpertTable.set; set the expert again");
  }
  op.hold(std::move(held));
}

Napi::Function ExpertTableWrap::Init(Napi::Env env) {
  return DefineClass(env, "ExpertTable",
                     {InstanceMethod<&ExpertTableWrap::Set>("set"), InstanceMethod<&ExpertTableWrap::Clear>("clear")});
}

ExpertTableWrap::ExpertTableWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ExpertTableWrap>(info) {
  Napi::Env env = info.Env();
  guarded(env, [&] {
    backend_ = static_cast<BackendKind>(arg_int(info[0], "backend", 0, 1));
    device_ = arg_int(info[1], "device", 0, 1023);
    e_ = arg_size(info[2], "e");
    h_ = arg_size(info[3], "h");
    inter_ = arg_size(info[4], "inter");
    if (e_ < 1 || e_ > (int64_t{1} << 24) || h_ < 1 || inter_ < 1)
      throw_error(env, ErrorCode::InvalidArgument,
                  "ExpertTable: e must be in [1, 2^24], h and inter >= 1, received " + std::to_string(e_) + ", " +
                      std::to_string(h_) + ", " + std::to_string(inter_));
    packed_ = info[5].IsBoolean() && info[5].As<Napi::Boolean>().Value();
    if (packed_ && backend_ != BackendKind::Cpu)
      throw_error(env, ErrorCode::InvalidArgument, "ExpertTable: packed weights are a CPU-backend layout, received a cuda table");
    entries_.assign(static_cast<size_t>(e_), nullptr);
    if (napi_type_tag_object(env, info.This(), &kExpertTableTag) != napi_ok)
      throw_error(env, ErrorCode::Internal, "ExpertTable: cannot tag the object");
  });
}

// Finalizer (GC) path: entries and the snapshot go with the last op holding them (or now).
ExpertTableWrap::~ExpertTableWrap() = default;

ExpertTableWrap* ExpertTableWrap::from(const Napi::Value& v) {
  if (!v.IsObject()) return nullptr;
  bool tagged = false;
  if (napi_check_object_type_tag(v.Env(), v, &kExpertTableTag, &tagged) != napi_ok || !tagged) return nullptr;
  return ExpertTableWrap::Unwrap(v.As<Napi::Object>());
}

int64_t ExpertTableWrap::expert_id(const Napi::Value& v) const {
  int64_t id = arg_size(v, "expert id");
  if (id >= e_)
    throw_error(v.Env(), ErrorCode::InvalidArgument,
                "expert id must be an integer in [0, " + std::to_string(e_) + "), received " + std::to_string(id));
  return id;
}

// set(i, { gate, up, down, gateBias?, upBias?, downBias? }, stacked): validates everything, then replaces entry i
// (a failed set leaves the table as it was).
Napi::Value ExpertTableWrap::Set(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const char* op = "ExpertTable.set";
    auto en = std::make_shared<ExpertEntry>();
    en->id = expert_id(info[0]);
    Napi::Object w = arg_object(info[1], "weights");
    en->stacked = info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
    Napi::Value v[6];
    int given = 0, given_bias = 0;
    for (int a = 0; a < 6; ++a) {
      v[a] = w.Get(kArgKeys[a]);
      const bool g = !v[a].IsUndefined() && !v[a].IsNull();
      given += g && a < 3;
      given_bias += g && a >= 3;
    }
    if (given != 3)
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string(op) + ": experts[" + std::to_string(en->id) + "] needs gate, up and down, received " +
                      std::to_string(given) + " of 3");
    if (given_bias != 0 && given_bias != 3)
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string(op) + ": experts[" + std::to_string(en->id) +
                      "] biases must be gateBias, upBias and downBias together or none, received " +
                      std::to_string(given_bias) + " of 3");
    en->biases = given_bias == 3;
    if (packed_ && en->stacked)
      throw_error(env, ErrorCode::InvalidArgument,
                  std::string(op) + ": experts[" + std::to_string(en->id) + "]: a packed table takes gate, up and down, not a stacked gateUp");
    const uint64_t wbytes = static_cast<uint64_t>(inter_) * static_cast<uint64_t>(h_) * 2;
    const uint64_t gbytes = packed_ ? static_cast<uint64_t>(cpu::packed_weights_numel(inter_, h_)) * 2 : wbytes;
    const uint64_t dbytes = packed_ ? static_cast<uint64_t>(cpu::packed_weights_numel(h_, inter_)) * 2 : wbytes;
    const uint64_t bytes[6] = {gbytes, gbytes, dbytes, static_cast<uint64_t>(inter_) * 4,
                               static_cast<uint64_t>(inter_) * 4, static_cast<uint64_t>(h_) * 4};
    for (int a = 0; a < (en->biases ? 6 : 3); ++a) {
      const std::string what = en->name(a);
      TensorSource src;
      TensorArg t = read_tensor_source(v[a], what.c_str(), src);
      check_placement(env, t, backend_, device_, op, what.c_str(), false);
      check_aligned(env, t, a < 3 ? DType::BF16 : DType::F32, op, what.c_str());
      check_bytes(env, t, bytes[a], op, what.c_str());
      en->ptr[a] = t.ptr;
      if (src.memory) {
        auto same = [&](const ExpertEntry::Mem& m) { return m.memory == src.memory; };
        if (std::none_of(en->mems.begin(), en->mems.end(), same)) en->mems.push_back({src.memory, a});
        continue;
      }
      Napi::ArrayBuffer ab = src.array.ArrayBuffer();
      const uint8_t* data = static_cast<const uint8_t*>(ab.Data());
      const uint64_t end = static_cast<uint64_t>(t.ptr - data) + t.bytes;
      auto it = std::find_if(en->bufs.begin(), en->bufs.end(), [&](const ExpertEntry::Buf& b) { return b.data == data; });
      if (it != en->bufs.end()) it->end = std::max(it->end, end);
      else en->bufs.push_back({Napi::Persistent(ab), data, end, a});
    }
    entries_[static_cast<size_t>(en->id)] = std::move(en);
    snap_.reset();
    return env.Undefined();
  });
}

Napi::Value ExpertTableWrap::Clear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const int64_t id = expert_id(info[0]);
    if (entries_[static_cast<size_t>(id)]) {
      entries_[static_cast<size_t>(id)].reset();
      snap_.reset();
    }
    return env.Undefined();
  });
}

std::shared_ptr<const ExpertTableSnapshot> ExpertTableWrap::snapshot() {
  if (snap_) return snap_;
  auto s = std::make_shared<ExpertTableSnapshot>();
  s->e = e_;
  for (const auto& en : entries_) s->biases = s->biases || (en && en->biases);
  const size_t e = static_cast<size_t>(e_);
  s->ptrs.assign((s->biases ? 6 : 3) * e, nullptr);
  for (size_t i = 0; i < e; ++i) {
    const std::shared_ptr<const ExpertEntry>& en = entries_[i];
    if (!en) continue;
    s->entries.push_back(en);
    for (int a = 0; a < (en->biases ? 6 : 3); ++a) s->ptrs[a * e + i] = en->ptr[a];
    for (const ExpertEntry::Mem& m : en->mems) s->memories.push_back({m.memory.get(), en.get(), m.arg});
    for (const ExpertEntry::Buf& b : en->bufs) s->buffers.push_back({&b, b.end, en.get()});
  }
  // One lease per allocation and one check per buffer, however many experts share it (an expert store: a few
  // large allocations). Stable sorts keep the first expert using each for messages.
  std::stable_sort(s->memories.begin(), s->memories.end(),
                   [](const auto& a, const auto& b) { return std::less<const Memory*>()(a.memory, b.memory); });
  s->memories.erase(std::unique(s->memories.begin(), s->memories.end(),
                                [](const auto& a, const auto& b) { return a.memory == b.memory; }),
                    s->memories.end());
  std::stable_sort(s->buffers.begin(), s->buffers.end(),
                   [](const auto& a, const auto& b) { return std::less<const uint8_t*>()(a.buf->data, b.buf->data); });
  std::vector<ExpertTableSnapshot::BufUse> bufs;
  for (const auto& b : s->buffers) {
    if (!bufs.empty() && bufs.back().buf->data == b.buf->data) bufs.back().end = std::max(bufs.back().end, b.end);
    else bufs.push_back(b);
  }
  s->buffers = std::move(bufs);
  snap_ = std::move(s);
  return snap_;
}

}  // namespace moe::js
