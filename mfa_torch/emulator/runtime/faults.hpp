// A wild memory access, a fiber stack overflow or an integer division by zero inside a kernel must not
// kill the Python process, and an endless loop must not hang it: SIGSEGV/SIGBUS/SIGFPE raised while a
// fiber runs, or the launch's watchdog timer firing, jump back to the worker's scheduler, which
// reports it. Faults anywhere else go to the previously installed handler.
#pragma once
#include <dlfcn.h>
#include <signal.h>
#include <ucontext.h>

#include <time.h>
#include <unistd.h>

#include <csetjmp>
#include <cstdlib>
#include <mutex>
#include <string>

#include "threadgroup.hpp"

namespace msl_rt {

struct FaultGuard;
inline thread_local FaultGuard* tl_fault_guard = nullptr;
inline int watchdog_signal() { return SIGRTMIN + 7; }  // a real-time signal nobody else uses
inline const int handled_signals[] = {SIGSEGV, SIGBUS, SIGFPE, watchdog_signal()};
inline struct sigaction previous_handlers[4];

// A signal that is not ours goes to the handler installed before (another emulated library's, Python's
// faulthandler, or the default action).
inline void chain_signal(int sig, siginfo_t* info, void* context) {
  for (int i = 0; i < 4; i++) {
    if (handled_signals[i] != sig) continue;
    const struct sigaction& previous = previous_handlers[i];
    if (previous.sa_flags & SA_SIGINFO) return previous.sa_sigaction(sig, info, context);
    if (previous.sa_handler == SIG_IGN || (previous.sa_handler == SIG_DFL && sig == watchdog_signal())) return;
    if (previous.sa_handler == SIG_DFL) {
      signal(sig, SIG_DFL);  // the fault repeats on return and takes the default action
      return;
    }
    return previous.sa_handler(sig);
  }
}

struct FaultGuard {
  sigjmp_buf jump;
  Group* armed = nullptr;
  uintptr_t address = 0, pc = 0;
  int thread = -1, signal_number = 0;
  double timeout;  // seconds for the whole launch; 0: none
  timer_t timer{};
  bool has_timer = false;
  stack_t previous_stack{};
  void* signal_stack = nullptr;

  static void on_fault(int sig, siginfo_t* info, void* context) {
    FaultGuard* self = tl_fault_guard;
    bool in_fiber = self && self->armed && self->armed->current >= 0;
    if (in_fiber) {
      self->address = reinterpret_cast<uintptr_t>(info->si_addr);
      self->pc = uintptr_t(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RIP]);
      self->thread = self->armed->current;
      self->signal_number = sig;
      siglongjmp(self->jump, 1);
    }
    if (sig == watchdog_signal() && self && self->has_timer) {
      self->arm_timer(0.001);  // between fibers: try again shortly, when a fiber (where the time goes) runs
      return;
    }
    chain_signal(sig, info, context);
  }

  explicit FaultGuard(double timeout_seconds) : timeout(timeout_seconds) {
#if defined(MSL_CHECK_BOUNDS) || defined(MSL_CHECK_RACES)
    return;  // checked modes run in a child process: the sanitizer reports faults, the parent times out
#endif
    static std::once_flag installed;
    std::call_once(installed, [] {
      struct sigaction sa {};
      sa.sa_sigaction = &FaultGuard::on_fault;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
      sigemptyset(&sa.sa_mask);
      for (int i = 0; i < 4; i++) sigaction(handled_signals[i], &sa, &previous_handlers[i]);
    });
    // a fiber stack overflow hits a guard page: the handler needs a stack of its own
    signal_stack = std::malloc(1 << 16);
    stack_t ss{};
    ss.ss_sp = signal_stack;
    ss.ss_size = 1 << 16;
    sigaltstack(&ss, &previous_stack);
    tl_fault_guard = this;
    if (timeout > 0) {
      sigevent ev{};
      ev.sigev_notify = SIGEV_THREAD_ID;  // this worker thread, the one running the fibers
      ev.sigev_signo = watchdog_signal();
      ev._sigev_un._tid = gettid();
      if (timer_create(CLOCK_MONOTONIC, &ev, &timer) == 0) has_timer = true, arm_timer(timeout);
    }
  }
  ~FaultGuard() {
    if (!signal_stack) return;
    if (has_timer) timer_delete(timer);
    sigaltstack(&previous_stack, nullptr);
    std::free(signal_stack);
    tl_fault_guard = nullptr;
  }
  void arm_timer(double seconds) {
    itimerspec when{};
    when.it_value.tv_sec = time_t(seconds);
    when.it_value.tv_nsec = long((seconds - double(time_t(seconds))) * 1e9);
    if (when.it_value.tv_sec == 0 && when.it_value.tv_nsec == 0) when.it_value.tv_nsec = 1;
    timer_settime(timer, 0, &when, nullptr);
  }
  void arm(Group* g) { armed = g; }
  void disarm() { armed = nullptr; }

  std::string describe() const {
    Dl_info info{};
    std::string at = "pc unknown";
    if (dladdr(reinterpret_cast<void*>(pc), &info) && info.dli_fname)
      at = format("@pc:%s+0x%lx", info.dli_fname, (unsigned long)(pc - reinterpret_cast<uintptr_t>(info.dli_fbase)));
    const Group& g = *armed;
    bool overflow = false;
    for (int t = 0; t < g.stack_count && !overflow; t++) {
      uintptr_t guard = reinterpret_cast<uintptr_t>(g.stacks) + size_t(t) * (fiber_stack_size + guard_size);
      overflow = address >= guard && address < guard + guard_size;
    }
    if (signal_number == watchdog_signal())
      return format("the kernel did not finish within %g s; this thread was running ", timeout) + "[" + at + "] (an endless "
             "loop? a spin-wait on another threadgroup?) [" + describe_group(g) + ", " + describe_thread(g, thread) + "]";
    const char* what = signal_number == SIGFPE ? "arithmetic exception (integer division by zero?)"
                       : overflow       ? "fiber stack overflow (thread-local arrays too large?)"
                                        : "invalid memory access (segmentation fault)";
    return format("%s (address 0x%lx) ", what, (unsigned long)address) +
           "[" + at + "] [" + describe_group(g) + ", " + describe_thread(g, thread) + "]";
  }
};

}  // namespace msl_rt
