#include "lowbit/engine_thread.hpp"

#include <pthread.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <future>
#include <mutex>
#include <thread>

namespace lowbit {

namespace {

struct Engine {
  std::mutex m;
  std::condition_variable cv;
  std::deque<std::function<void()>> queue;
  std::thread::id id;

  Engine() {
    std::thread t([this] { loop(); });
    id = t.get_id();
    t.detach();  // lives as long as the process (never joined at exit)
  }
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lk(m);
        cv.wait(lk, [this] { return !queue.empty(); });
        task = std::move(queue.front());
        queue.pop_front();
      }
      task();  // tasks catch their own exceptions
    }
  }
  void push(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lk(m);
      queue.push_back(std::move(task));
    }
    cv.notify_one();
  }
  bool pop(std::function<void()>& task) {
    std::lock_guard<std::mutex> lk(m);
    if (queue.empty()) return false;
    task = std::move(queue.front());
    queue.pop_front();
    return true;
  }
};

std::mutex g_create;
Engine* g_engine = nullptr;  // deliberately leaked: the thread outlives static destructors

Engine& engine() {
  std::lock_guard<std::mutex> lk(g_create);
  if (!g_engine) {
    static bool registered = false;
    if (!registered) {  // a forked child has no engine thread: start a new one there
      pthread_atfork(nullptr, nullptr, [] { g_engine = nullptr; new (&g_create) std::mutex(); });
      registered = true;
    }
    g_engine = new Engine();
  }
  return *g_engine;
}

}  // namespace

void run_on_engine(const std::function<void()>& task) {
  Engine& e = engine();
  if (std::this_thread::get_id() == e.id) {
    task();
    return;
  }
  std::promise<void> done;
  auto result = done.get_future();
  e.push([&task, &done] {
    try {
      task();
      done.set_value();
    } catch (...) {
      done.set_exception(std::current_exception());
    }
  });
  result.get();
}

void engine_yield() {
  Engine& e = engine();
  if (std::this_thread::get_id() != e.id) return;
  std::function<void()> task;
  while (e.pop(task)) task();
}

}  // namespace lowbit
