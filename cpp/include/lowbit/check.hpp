// Argument checks at the engine boundary. Every failure throws a typed C++ exception
// that the bindings translate: std::invalid_argument -> ValueError,
// lowbit::type_error -> TypeError.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace lowbit {

struct type_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... R>
void append(std::ostringstream& os, const T& v, const R&... r) {
  os << v;
  append(os, r...);
}
}  // namespace detail

template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  detail::append(os, a...);
  return os.str();
}

}  // namespace lowbit

// LB_CHECK(cond, "conv2d: expected ", x, ", got ", y)
#define LB_CHECK(cond, ...)                                         \
  do {                                                              \
    if (!(cond)) throw std::invalid_argument(::lowbit::str(__VA_ARGS__)); \
  } while (0)
