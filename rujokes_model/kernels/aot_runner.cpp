// The decode step's AOTInductor library, run as a torch op: torch.ops.rujokes_aot.run(runner, inputs).
//
// torch's Python binding of a loaded AOTInductor library holds the GIL for the whole step; an op called
// from Python runs with the GIL released, so the worker's event loop keeps running while a batch decodes.
// The runner is torch's own (it also creates the proxy executor through which the library calls our
// kernels); runners live here under integer handles, since an op can return no C++ object.
#include <torch/csrc/inductor/aoti_runner/model_container_runner_cpu.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

struct Runner {
  explicit Runner(const std::string& library) : runner(library, /*num_models=*/1) {}
  torch::inductor::AOTIModelContainerRunnerCpu runner;
  // The library reads these tensors' memory (user-managed constants): held here as long as it may.
  std::unordered_map<std::string, at::Tensor> constants;
};

std::mutex runners_lock;
std::unordered_map<int64_t, std::shared_ptr<Runner>> runners;
int64_t last_handle = 0;

std::shared_ptr<Runner> find(int64_t handle) {
  std::lock_guard<std::mutex> guard(runners_lock);
  auto found = runners.find(handle);
  TORCH_CHECK(found != runners.end(), "no decode-step library is loaded under handle ", handle);
  return found->second;
}

int64_t load(std::string library) {
  auto runner = std::make_shared<Runner>(library);
  std::lock_guard<std::mutex> guard(runners_lock);
  runners.emplace(++last_handle, std::move(runner));
  return last_handle;
}

// [name, original name (the module's FQN), name, original name, ...] for every constant the library reads.
std::vector<std::string> constant_names(int64_t handle) {
  std::vector<std::string> names;
  for (const auto& [name, fqn] : find(handle)->runner.getConstantNamesToOriginalFQNs()) {
    names.push_back(name);
    names.push_back(fqn);
  }
  return names;
}

void bind(int64_t handle, std::vector<std::string> names, std::vector<at::Tensor> tensors) {
  TORCH_CHECK(names.size() == tensors.size(), "bind: ", names.size(), " names for ", tensors.size(), " tensors");
  auto runner = find(handle);
  runner->constants.clear();
  for (size_t i = 0; i < names.size(); ++i) {
    runner->constants.emplace(names[i], tensors[i]);
  }
  runner->runner.update_constant_buffer(runner->constants, /*use_inactive=*/false, /*validate_full_updates=*/true,
                                        /*user_managed=*/true);
}

std::vector<at::Tensor> run(int64_t handle, std::vector<at::Tensor> inputs) {
  return find(handle)->runner.run(inputs);
}

void unload(int64_t handle) {
  std::shared_ptr<Runner> runner;  // destroyed outside the lock
  std::lock_guard<std::mutex> guard(runners_lock);
  auto found = runners.find(handle);
  if (found != runners.end()) {
    runner = std::move(found->second);
    runners.erase(found);
  }
}

}  // namespace

TORCH_LIBRARY(rujokes_aot, m) {
  m.def("load(str library) -> int", &load);
  m.def("constant_names(int runner) -> str[]", &constant_names);
  m.def("bind(int runner, str[] names, Tensor[] tensors) -> ()", &bind);
  // Writes the caches among `inputs` in place; called eagerly only, never traced.
  m.def("run(int runner, Tensor[] inputs) -> Tensor[]", &run);
  m.def("unload(int runner) -> ()", &unload);
}
