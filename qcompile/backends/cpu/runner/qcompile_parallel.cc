// The artifact's own parallel-for runtime, linked into every CPU artifact.
//
// TVM's generated code runs a parallel loop by calling the function pointer
// __TVMBackendParallelLaunch(lambda, data, 0); the lambda splits the loop statically into
// penv->num_task contiguous chunks and runs chunk task_id. TVM's thread pool gives each thread
// exactly one chunk and waits for all: when another process holds a core, the descheduled thread's
// chunk finishes a scheduler time slice later, at every parallel loop, and a model of 2 ms took
// 20 ms on a busy 2-core machine while onnxruntime's pool (where a waiting thread takes over work)
// lost little. Here the calling thread and the workers claim chunks from one counter, and the
// caller never waits for a thread that has not started. On a quiet machine a loop is cut into one
// chunk per thread, as TVM's pool cuts it: finer chunks cost a claim and a shared cache line's
// round trip each (BlazeFace int8 with 4 chunks per thread ran 1.1-1.3x the time of TVM's pool on
// a 2-core Xeon). Once the caller has had to sleep for a chunk (its thread lost the core), the next
// loops are cut into kChunksPerThread chunks per thread, so a busy core costs at most the smaller
// chunk it holds.
//
// The loaders (qcompile's Python loader, the bundle's qcompile_run) call
// qcompile_use_parallel_pool() after TVM has loaded the library (TVM sets the pointer to its own
// pool at load). QCOMPILE_THREAD_POOL=tvm keeps TVM's. Threads: TVM_NUM_THREADS, else
// OMP_NUM_THREADS, else the CPUs this process may run on.
//
// Plain C underneath (pthreads, futexes, header-only atomics, no allocation): the artifact must
// need nothing beyond libc and libm, so nothing here may pull in libstdc++ or libgcc_s.
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>

extern "C" {
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
// weak: a library whose kernels have no parallel loop has no such pointer
extern void* __TVMBackendParallelLaunch __attribute__((weak));
}

namespace {

constexpr int kChunksPerThread = 4;  // per thread, while a core is contended
constexpr int kContendedLaunches = 256;  // loops cut finely after the caller slept for a chunk
constexpr int kSpinIterations = 1 << 14;  // a worker's busy wait for the next loop before it sleeps

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

int64_t now_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield");
#endif
}

int thread_count() {
  static const char* const kNames[] = {"TVM_NUM_THREADS", "OMP_NUM_THREADS"};
  for (const char* name : kNames) {
    const char* value = getenv(name);
    if (value != nullptr && atoi(value) > 0) return atoi(value);
  }
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) > 0) return CPU_COUNT(&cpus);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

// A global with constant initialization (no constructor runs at load, nothing is destroyed at exit).
struct Pool {
  // One job at a time; a second caller (another thread of the process) runs its loop alone.
  std::atomic<int> busy{0};
  int threads = 1;
  // The job: written by the caller before it publishes the generation, read after a claim.
  FTVMParallelLambda fn = nullptr;
  void* cdata = nullptr;
  // (generation << 32) | (chunks << 16) | next chunk: a claim is one compare-exchange, so a late
  // worker can never take a chunk of a later job under an earlier job's generation, and it reads the
  // job's chunk count from the same word (read from num_task, a worker still in the last job could
  // see the next job's larger count and claim a chunk past the last job's end, under its generation:
  // `done` then overshot the next job's count and the caller waited for ever).
  alignas(64) std::atomic<uint64_t> state{0};
  alignas(64) std::atomic<uint32_t> generation{0};  // futex word the idle workers sleep on
  std::atomic<int> sleepers{0};
  alignas(64) std::atomic<uint32_t> done{0};  // chunks finished; futex word the caller sleeps on
  std::atomic<int> caller_sleeping{0};
  std::atomic<int> failed{0};
  int contended_launches = 0;  // loops still to cut finely; read and written by the caller only
  // what qcompile_parallel_pool_stats reports: loops launched, chunks run by the caller, by
  // workers, and the loops cut into kChunksPerThread chunks per thread
  alignas(64) std::atomic<int64_t> launches{0}, caller_chunks{0}, worker_chunks{0}, fine_launches{0};

  // Claims and runs chunks of job `gen` until none is left.
  void RunChunks(uint32_t gen, std::atomic<int64_t>* count) {
    int64_t ran = 0;  // counted once at the end: a shared counter per chunk is another line's round trip
    for (;;) {
      uint64_t s = state.load(std::memory_order_acquire);
      uint32_t index = static_cast<uint32_t>(s & 0xFFFF);
      int n = static_cast<int>((s >> 16) & 0xFFFF);
      if ((s >> 32) != gen || index >= static_cast<uint32_t>(n)) break;
      if (!state.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) continue;
      TVMParallelGroupEnv env{nullptr, n};
      if (fn(static_cast<int>(index), &env, cdata) != 0) failed.store(1, std::memory_order_relaxed);
      ++ran;
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == static_cast<uint32_t>(n) &&
          caller_sleeping.load(std::memory_order_seq_cst)) {
        futex_wake(&done);
      }
    }
    if (ran > 0) count->fetch_add(ran, std::memory_order_relaxed);
  }

  void Work() {
    uint32_t seen = 0;
    for (;;) {
      int spins = 0;
      uint32_t gen;
      while ((gen = generation.load(std::memory_order_acquire)) == seen) {
        if (++spins < kSpinIterations) {
          cpu_relax();
          continue;
        }
        sleepers.fetch_add(1, std::memory_order_seq_cst);
        futex_wait(&generation, seen);
        sleepers.fetch_sub(1, std::memory_order_seq_cst);
        spins = 0;
      }
      seen = gen;
      RunChunks(gen, &worker_chunks);
    }
  }

  int Launch(FTVMParallelLambda lambda, void* data) {
    int n = threads;  // at most 4096 threads x kChunksPerThread: the state word holds 16 bits of it
    if (contended_launches > 0) {
      --contended_launches;
      n *= kChunksPerThread;
      fine_launches.fetch_add(1, std::memory_order_relaxed);
    }
    fn = lambda;
    cdata = data;
    failed.store(0, std::memory_order_relaxed);
    done.store(0, std::memory_order_relaxed);
    uint32_t gen = generation.load(std::memory_order_relaxed) + 1;
    if (gen == 0) gen = 1;  // never the workers' initial `seen`
    state.store(static_cast<uint64_t>(gen) << 32 | static_cast<uint64_t>(n) << 16, std::memory_order_release);
    generation.store(gen, std::memory_order_seq_cst);
    if (sleepers.load(std::memory_order_seq_cst) > 0) futex_wake(&generation);
    launches.fetch_add(1, std::memory_order_relaxed);
    int64_t start = now_ns();
    RunChunks(gen, &caller_chunks);
    int64_t ran_until = now_ns();
    // Waiting longer than the caller's own chunks took (and a 20 us floor for a wake-up) means a
    // chunk's thread lost its core, not that the chunks were uneven.
    int64_t patience = ran_until - start > 20000 ? ran_until - start : 20000;
    for (int spins = 0; done.load(std::memory_order_acquire) != static_cast<uint32_t>(n); ++spins) {
      if ((spins & 63) != 0 || now_ns() - ran_until < patience) {
        cpu_relax();
        continue;
      }
      // A chunk is still running on a thread that lost its core: sleep until it ends, so the
      // scheduler may move that thread here.
      contended_launches = kContendedLaunches;
      caller_sleeping.store(1, std::memory_order_seq_cst);
      uint32_t d = done.load(std::memory_order_seq_cst);
      if (d != static_cast<uint32_t>(n)) futex_wait(&done, d);
      caller_sleeping.store(0, std::memory_order_seq_cst);
    }
    return failed.load(std::memory_order_relaxed) ? -1 : 0;
  }
};

Pool pool;
pthread_once_t pool_started = PTHREAD_ONCE_INIT;

void* WorkerMain(void*) {
  pool.Work();
  return nullptr;
}

void StartPool() {
  int threads = thread_count() < 4096 ? thread_count() : 4096;  // chunks must fit 16 bits (Launch)
  pool.threads = 1;
  for (int i = 1; i < threads; ++i) {
    pthread_t worker;
    if (pthread_create(&worker, nullptr, WorkerMain, nullptr) != 0) break;  // fewer threads, still correct
    pthread_detach(worker);
    pool.threads += 1;
  }
}

Pool* the_pool() {
  pthread_once(&pool_started, StartPool);
  return &pool;
}

thread_local bool in_loop = false;

int RunSerially(FTVMParallelLambda lambda, void* data) {
  TVMParallelGroupEnv env{nullptr, 1};
  return lambda(0, &env, data);
}

int ParallelLaunch(FTVMParallelLambda lambda, void* data, int /*num_task: TVM passes 0, "the pool's size"*/) {
  Pool* pool = the_pool();
  if (pool->threads <= 1 || in_loop) return RunSerially(lambda, data);
  if (pool->busy.exchange(1, std::memory_order_acquire) != 0) return RunSerially(lambda, data);
  in_loop = true;
  int status = pool->Launch(lambda, data);
  in_loop = false;
  pool->busy.store(0, std::memory_order_release);
  return status;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int qcompile_use_parallel_pool() {
  const char* choice = getenv("QCOMPILE_THREAD_POOL");
  if (choice != nullptr && strcmp(choice, "tvm") == 0) return 0;
  if (&__TVMBackendParallelLaunch == nullptr) return 0;
  __TVMBackendParallelLaunch = reinterpret_cast<void*>(&ParallelLaunch);
  return 1;
}

// For tests and benchmarks: the pool's thread count, and in out[0..3] the loops it ran in
// parallel, the chunks the calling thread ran, those its workers ran, and the loops it cut into
// kChunksPerThread chunks per thread (after a stall) rather than one.
extern "C" __attribute__((visibility("default"))) int qcompile_parallel_pool_stats(int64_t* out) {
  Pool* pool = the_pool();
  out[0] = pool->launches.load();
  out[1] = pool->caller_chunks.load();
  out[2] = pool->worker_chunks.load();
  out[3] = pool->fine_launches.load();
  return pool->threads;
}
