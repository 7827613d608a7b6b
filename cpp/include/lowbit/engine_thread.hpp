// One engine thread runs every graph computation, whichever Python thread asks.
// Why: oneDNN (built without DNNL_ENABLE_CONCURRENT_EXEC, as Debian's is) keeps its
// scratchpad per thread, so a primitive must run on the thread that created it; and a
// graph's activation, gradient and optimizer buffers are shared by fit, evaluate and
// predict. Calls are queued first-in first-out and run one at a time; fit() runs the
// calls queued meanwhile between two batches, so predict from another thread waits at
// most one batch and sees the weights of a batch boundary.
#pragma once
#include <functional>

namespace lowbit {

// Run `task` on the engine thread and wait for it; exceptions are rethrown here.
// On the engine thread itself it runs inline. Call with the GIL released.
void run_on_engine(const std::function<void()>& task);
// On the engine thread: run the calls queued so far (a batch boundary of fit).
void engine_yield();

}  // namespace lowbit
