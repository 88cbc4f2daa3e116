// A C API over ExecuTorch's prebuilt C++ runtime (libexecutorch.so and the kernel and XNNPACK
// libraries of the executorch wheel), for runner.py to call through ctypes.
//
// Why: the wheel's Python binding links libtorch, and PyPI's aarch64 torch is a CUDA build whose
// libtorch_cpu.so itself needs libcudart and libcupti. The runtime libraries need neither torch nor
// CUDA, and the wheel ships their headers and CMake config for C++ consumers; this file is all that
// is missing between them and Python. scripts/pi-rootfs.sh cross-compiles it into the rootfs:
//
//   aarch64-linux-gnu-g++ -std=c++17 -O2 -shared -fPIC executorch_capi.cpp \
//       -DC10_USING_CUSTOM_GENERATED_MACROS -DET_EVENT_TRACER_ENABLED \
//       -I$ET/include -I$ET/include/executorch/runtime/core/portable_type/c10 \
//       -L$ET/lib -Wl,--no-as-needed -lexecutorch -lexecutorch_kernels_optimized \
//       -lexecutorch_kernels_quantized -lexecutorch_backend_xnnpack -lexecutorch_threadpool \
//       -Wl,-rpath,'$ORIGIN/../executorch/lib' -o libexecutorch_capi.so
//
// One float32 input, one float32 output, static shapes: what edgekit's .pte files are. The runner
// loads one model per process, so a model lives until the process ends (no free).

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

namespace executorch::extension::threadpool {
// Declared in threadpool.h, which the wheel does not ship; defined in libexecutorch_threadpool.so.
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::TensorInfo;

struct Model {
  std::unique_ptr<Module> module;
  std::vector<int32_t> input_sizes;
  std::vector<int32_t> output_sizes;
};

void say(char* err, size_t len, const std::string& text) {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", text.c_str());
  }
}

std::string why(Error error) {
  return std::string(executorch::runtime::to_string(error)) + " (error " +
      std::to_string(static_cast<int>(error)) + ")";
}

// The sizes of a float32 tensor, or the reason it is not one.
bool float_sizes(
    const executorch::runtime::Result<TensorInfo>& info,
    const char* what,
    std::vector<int32_t>& sizes,
    char* err,
    size_t len) {
  if (!info.ok()) {
    say(err, len, std::string("no tensor ") + what + ": " + why(info.error()));
    return false;
  }
  if (info->scalar_type() != ScalarType::Float) {
    say(err, len,
        std::string(what) + " is not float32 (scalar type " +
            std::to_string(static_cast<int>(info->scalar_type())) + ")");
    return false;
  }
  sizes.assign(info->sizes().begin(), info->sizes().end());
  return true;
}

size_t numel(const std::vector<int32_t>& sizes) {
  size_t n = 1;
  for (int32_t d : sizes) {
    n *= static_cast<size_t>(d);
  }
  return n;
}

int copy_sizes(const std::vector<int32_t>& sizes, int64_t* out, int max) {
  const int ndim = static_cast<int>(sizes.size());
  for (int i = 0; i < ndim && i < max; ++i) {
    out[i] = sizes[i];
  }
  return ndim;
}

}  // namespace

extern "C" {

// Sets XNNPACK's (process-wide) thread pool, then loads `path` and its forward method (the
// delegate compiles here). NULL on failure, with the reason in err.
void* ek_load(const char* path, int threads, char* err, size_t len) {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr || !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads))) {
    say(err, len, "cannot set the thread pool to " + std::to_string(threads) + " threads");
    return nullptr;
  }
  auto model = std::make_unique<Model>();
  model->module = std::make_unique<Module>(path, Module::LoadMode::File);
  const Error loaded = model->module->load_forward();
  if (loaded != Error::Ok) {
    say(err, len, "cannot load the forward method: " + why(loaded));
    return nullptr;
  }
  auto meta = model->module->method_meta("forward");
  if (!meta.ok()) {
    say(err, len, "no forward method: " + why(meta.error()));
    return nullptr;
  }
  if (meta->num_inputs() != 1 || meta->num_outputs() != 1) {
    say(err, len,
        "expected 1 input and 1 output, found " + std::to_string(meta->num_inputs()) + " and " +
            std::to_string(meta->num_outputs()));
    return nullptr;
  }
  if (!float_sizes(meta->input_tensor_meta(0), "input", model->input_sizes, err, len) ||
      !float_sizes(meta->output_tensor_meta(0), "output", model->output_sizes, err, len)) {
    return nullptr;
  }
  return model.release();
}

// The input's (or output's) sizes into dims (at most max); returns the rank.
int ek_input_sizes(void* handle, int64_t* dims, int max) {
  return copy_sizes(static_cast<Model*>(handle)->input_sizes, dims, max);
}

int ek_output_sizes(void* handle, int64_t* dims, int max) {
  return copy_sizes(static_cast<Model*>(handle)->output_sizes, dims, max);
}

// One forward pass: x holds the input's numel floats, y receives the output's. 0 on success.
int ek_forward(void* handle, float* x, float* y, char* err, size_t len) {
  auto* model = static_cast<Model*>(handle);
  auto input = executorch::extension::from_blob(x, model->input_sizes, ScalarType::Float);
  auto result = model->module->forward(*input);
  if (!result.ok()) {
    say(err, len, "forward failed: " + why(result.error()));
    return 1;
  }
  const auto& out = result->at(0).toTensor();
  if (static_cast<size_t>(out.numel()) != numel(model->output_sizes)) {
    say(err, len, "the output has " + std::to_string(out.numel()) + " values, not " +
            std::to_string(numel(model->output_sizes)));
    return 1;
  }
  std::memcpy(y, out.const_data_ptr<float>(), out.numel() * sizeof(float));
  return 0;
}

}  // extern "C"
