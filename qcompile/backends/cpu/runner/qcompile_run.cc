// qcompile_run: loads a qcompile artifact (a Relax VM executable in a shared library) through
// the tvm-ffi C++ API and runs its `main` on .npy inputs, writing .npy outputs.
//
//   qcompile_run MODEL.so OUT_DIR [--repeat N] [--threads N] IN0.npy [IN1.npy ...]
//
// Inputs are passed in the model's parameter order; outputs are written as OUT_DIR/output_<i>.npy
// (OUT_DIR is created if missing).
// With --repeat N, main runs N more times and the median latency in ms is printed as
// "latency_ms_median=<value>".
// Kernels run on --threads N threads, else TVM_NUM_THREADS / OMP_NUM_THREADS, else one per
// physical core this process may run on (TVM's own default is half the logical CPUs on x86,
// which on a machine without SMT is half its cores). "threads=<n>" is printed, and "thread_pool=qcompile"
// when the artifact's own pool (qcompile_parallel.cc) runs its parallel loops, else "thread_pool=tvm".
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <dlfcn.h>
#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (n + 63) / 64 * 64 + 64);
    if (t->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

[[noreturn]] void Fail(const std::string& msg) {
  std::cerr << "qcompile_run: error: " << msg << std::endl;
  std::exit(2);
}

struct DTypeName {
  const char* npy;
  DLDataType dl;
};

const DTypeName kDTypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"<f2", {kDLFloat, 16, 1}}, {"<f8", {kDLFloat, 64, 1}},
    {"|i1", {kDLInt, 8, 1}},    {"|u1", {kDLUInt, 8, 1}},   {"<i2", {kDLInt, 16, 1}},
    {"<i4", {kDLInt, 32, 1}},   {"<i8", {kDLInt, 64, 1}},   {"|b1", {kDLBool, 8, 1}},
};

DLDataType ParseDType(const std::string& descr, const std::string& file) {
  for (const auto& d : kDTypes)
    if (descr == d.npy) return d.dl;
  Fail(file + ": unsupported .npy dtype '" + descr + "'");
}

std::string DTypeDescr(DLDataType t) {
  for (const auto& d : kDTypes)
    if (d.dl.code == t.code && d.dl.bits == t.bits) return d.npy;
  Fail("unsupported output dtype code=" + std::to_string(t.code) + " bits=" + std::to_string(t.bits));
}

std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (header[start] == '\'') return header.substr(start + 1, header.find('\'', start + 1) - start - 1);
  if (header[start] == '(') return header.substr(start + 1, header.find(')', start) - start - 1);
  return header.substr(start, header.find_first_of(",}", start) - start);
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) Fail(path + ": cannot open");
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) Fail(path + ": not a .npy file");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h16;
    f.read(reinterpret_cast<char*>(&h16), 2);
    hlen = h16;
  } else {
    f.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, '\0');
  f.read(&header[0], hlen);
  if (HeaderValue(header, "fortran_order") != "False") Fail(path + ": fortran order not supported");
  DLDataType dtype = ParseDType(HeaderValue(header, "descr"), path);
  std::vector<int64_t> shape;
  std::stringstream ss(HeaderValue(header, "shape"));
  std::string dim;
  while (std::getline(ss, dim, ','))
    if (dim.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(dim));
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                           dtype, DLDevice{kDLCPU, 0});
  size_t nbytes = ffi::GetDataSize(*t.GetDLTensorPtr());
  f.read(static_cast<char*>(t.data_ptr()), nbytes);
  if (static_cast<size_t>(f.gcount()) != nbytes) Fail(path + ": truncated data");
  return t;
}

void WriteNpy(const std::string& path, const ffi::Tensor& t) {
  std::string shape = "(";
  for (int64_t d : t.shape()) shape += std::to_string(d) + ", ";
  if (t.shape().size() > 1) shape.resize(shape.size() - 2);
  if (t.shape().size() == 1) shape.resize(shape.size() - 1);
  shape += ")";
  std::string header = "{'descr': '" + DTypeDescr(t.dtype()) + "', 'fortran_order': False, 'shape': " +
                       shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  if (!f) Fail(path + ": cannot write");
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t hlen = static_cast<uint16_t>(header.size());
  f.write(reinterpret_cast<const char*>(&hlen), 2);
  f.write(header.data(), header.size());
  f.write(static_cast<const char*>(t.data_ptr()), ffi::GetDataSize(*t.GetDLTensorPtr()));
}

void CollectOutputs(const ffi::Any& result, std::vector<ffi::Tensor>* outputs) {
  if (auto t = result.try_cast<ffi::Tensor>()) {
    outputs->push_back(*t);
  } else if (auto arr = result.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) CollectOutputs(item, outputs);
  } else {
    Fail("model returned a value that is neither a tensor nor a tuple of tensors");
  }
}

std::string ReadLine(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

// Distinct (package, core) pairs among the CPUs in this process's affinity mask.
int PhysicalCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  std::set<std::string> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    std::string topo = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::string package = ReadLine(topo + "physical_package_id"), core = ReadLine(topo + "core_id");
    cores.insert(core.empty() ? "cpu" + std::to_string(cpu) : package + ":" + core);
  }
  return std::max<int>(1, static_cast<int>(cores.size()));
}

bool IsCount(const char* value) {
  return value != nullptr && *value != '\0' && std::strspn(value, "0123456789") == std::strlen(value);
}

}  // namespace

// The artifact's own parallel-for runtime (qcompile_parallel.cc, linked into it) replaces TVM's
// thread pool once TVM has loaded the library; an artifact without one keeps TVM's. Returns the
// pool's qcompile_parallel_pool_stats when it is in use.
using PoolStats = int (*)(int64_t*);
PoolStats UseArtifactThreadPool(const std::string& model) {
  void* handle = dlopen(model.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr || dlsym(handle, "__TVMBackendParallelBarrier") != nullptr) return nullptr;
  auto* use = reinterpret_cast<int (*)()>(dlsym(handle, "qcompile_use_parallel_pool"));
  if (use == nullptr || !use()) return nullptr;
  return reinterpret_cast<PoolStats>(dlsym(handle, "qcompile_parallel_pool_stats"));
}

int main(int argc, char** argv) {
  if (argc < 3) Fail("usage: qcompile_run MODEL.so OUT_DIR [--repeat N] [--threads N] IN0.npy [IN1.npy ...]");
  std::string model = argv[1], out_dir = argv[2];
  int repeat = 0;
  std::string threads;
  std::vector<ffi::Tensor> inputs;
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--repeat" && i + 1 < argc) {
      repeat = std::atoi(argv[++i]);
    } else if (std::string(argv[i]) == "--threads" && i + 1 < argc) {
      threads = argv[++i];
      if (!IsCount(threads.c_str()) || std::atoi(threads.c_str()) < 1) Fail("--threads " + threads + ": not a positive count");
    } else {
      inputs.push_back(ReadNpy(argv[i]));
    }
  }
  if (threads.empty() && !IsCount(std::getenv("TVM_NUM_THREADS")) && !IsCount(std::getenv("OMP_NUM_THREADS")))
    threads = std::to_string(PhysicalCores());
  if (!threads.empty()) setenv("TVM_NUM_THREADS", threads.c_str(), 1);  // read by TVM at each parallel launch
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(model);
    PoolStats pool_stats = UseArtifactThreadPool(model);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // (device type, device id, allocator type) for the CPU; 2 is the pooled allocator.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function main_fn = vm->GetFunction("main").value();
    std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
    ffi::Any result;
    main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<double> times;
    for (int r = 0; r < repeat; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      ffi::Any again;
      main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &again);
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::vector<ffi::Tensor> outputs;
    CollectOutputs(result, &outputs);
    if (mkdir(out_dir.c_str(), 0755) != 0 && errno != EEXIST) Fail(out_dir + ": cannot create the output folder");
    for (size_t i = 0; i < outputs.size(); ++i)
      WriteNpy(out_dir + "/output_" + std::to_string(i) + ".npy", outputs[i]);
    if (!times.empty()) {
      std::sort(times.begin(), times.end());
      std::printf("latency_ms_median=%.4f\n", times[times.size() / 2]);
    }
    std::printf("outputs=%zu\n", outputs.size());
    if (pool_stats != nullptr) {
      int64_t counts[4];
      std::printf("threads=%d\nthread_pool=qcompile\n", pool_stats(counts));
    } else if (auto num_threads = ffi::Function::GetGlobal("runtime.NumThreads")) {
      std::printf("threads=%d\nthread_pool=tvm\n", (*num_threads)().cast<int>());
    }
  } catch (const std::exception& e) {
    Fail(std::string(model) + ": " + e.what());
  }
  return 0;
}
