// JS class `ExpertTable(backend, device, e, h, inter, packed?)`: the native half of lib/moe.ts ExpertTable, a persistent
// per-expert pointer table for moeExperts (cpp/ops/moe_experts.cc).
//
//   set(i, { gate, up, down, gateBias?, upBias?, downBias? }, stacked)   tensor args (cpp/napi/tensor_arg.h):
//       gate, up [inter, h] bf16, down [h, inter] bf16; biases f32 [inter], [inter], [h], all three or none.
//       stacked: gate and up are the two halves of one gateUp (only changes the names in messages).
//       packed tables (CPU only, not stacked): gate, up and down hold the panel64 forms of those shapes
//       (cpu/pack_weights.h, packed_weights_numel values each); moeExperts then runs its packed path.
//   clear(i)                                                             expert i absent (contributes zero)
//
// Validation (range, placement for the table's backend and device, alignment, bytes) happens once, in set; the
// entry then holds the pointers plus what keeps its bytes alive: a reference to each native allocation it lies in
// (shared_ptr<Memory>, not a lease, so Memory.dispose() still frees at once) and a strong reference to each JS
// ArrayBuffer.
//
// In-flight safety: an op takes snapshot(), an immutable ExpertTableSnapshot (the pointer arrays and the entries
// it was built from) shared by every op that runs while the table is unchanged; set and clear never touch a
// snapshot, they drop the table's, and the next op builds a new one (copy-on-write). The op holds its snapshot and
// leases every allocation of it (lease_into) until it settles, so a table mutated or dropped while the op is in
// flight changes neither the op's pointers nor the lifetime of the bytes they point to.
//
// Threads: everything here runs on the JS thread, including the destruction of entries and snapshots (they hold
// napi references); ops hold snapshots through AsyncOp::hold, released in settle() on the JS thread, and their
// work functions see only the raw pointer arrays.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "async_op.h"
#include "common.h"
#include "memory.h"

namespace moe::js {

// One present expert, immutable once built by set().
struct ExpertEntry {
  int64_t id = 0;
  bool stacked = false;  // set from a stacked gateUp (and gateUpBias): names in messages
  bool biases = false;
  const void* ptr[6] = {};  // gate, up, down, gateBias, upBias, downBias (biases nullptr without)
  // The distinct native allocations / JS ArrayBuffers the pointers lie in; arg: the first argument (0..5) in each.
  struct Mem {
    std::shared_ptr<Memory> memory;
    int arg;
  };
  struct Buf {
    Napi::Reference<Napi::ArrayBuffer> ref;
    const uint8_t* data;  // the ArrayBuffer's bytes at set()
    uint64_t end;         // bytes of it the pointers reach
    int arg;
  };
  std::vector<Mem> mems;
  std::vector<Buf> bufs;
  // "experts[3].gateUp" etc.
  std::string name(int arg) const;
};

struct ExpertTableSnapshot {
  int64_t e = 0;
  bool biases = false;  // some expert has biases: ptrs holds 6 arrays, else 3
  // gate | up | down [| gateBias | upBias | downBias], e pointers each; nullptr where absent (an absent expert, or
  // an expert without biases in the bias arrays).
  std::vector<const void*> ptrs;
  std::vector<std::shared_ptr<const ExpertEntry>> entries;  // the present ones: keep the pointers valid
  // The distinct allocations and JS buffers of all entries (the first entry and argument naming each).
  struct MemUse {
    Memory* memory;
    const ExpertEntry* entry;
    int arg;
  };
  struct BufUse {
    const ExpertEntry::Buf* buf;
    uint64_t end;  // the most any entry reaches
    const ExpertEntry* entry;
  };
  std::vector<MemUse> memories;
  std::vector<BufUse> buffers;
  // JS thread, at submission: a lease on every distinct allocation into `op` (Disposed, naming the entry and
  // argument, when one was disposed since set) and a check that every JS buffer is still attached and as large
  // (InvalidArgument otherwise). `op_name` prefixes the messages.
  void lease_into(Napi::Env env, AsyncOp& op, const char* op_name) const;
};

class ExpertTableWrap : public Napi::ObjectWrap<ExpertTableWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit ExpertTableWrap(const Napi::CallbackInfo& info);
  ~ExpertTableWrap() override;
  // The table behind v, or nullptr when v is not an ExpertTable.
  static ExpertTableWrap* from(const Napi::Value& v);

  BackendKind backend() const { return backend_; }
  int device() const { return device_; }
  int64_t experts() const { return e_; }
  int64_t hidden() const { return h_; }
  int64_t inter() const { return inter_; }
  bool packed() const { return packed_; }
  // The table as it is now (built on first use after a set / clear, then shared).
  std::shared_ptr<const ExpertTableSnapshot> snapshot();

 private:
  Napi::Value Set(const Napi::CallbackInfo& info);
  Napi::Value Clear(const Napi::CallbackInfo& info);
  int64_t expert_id(const Napi::Value& v) const;

  BackendKind backend_ = BackendKind::Cpu;
  int device_ = 0;
  int64_t e_ = 0, h_ = 0, inter_ = 0;
  bool packed_ = false;
  std::vector<std::shared_ptr<const ExpertEntry>> entries_;  // e_, nullptr where absent
  std::shared_ptr<const ExpertTableSnapshot> snap_;          // nullptr after set / clear
};

}  // namespace moe::js
