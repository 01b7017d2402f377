// as_type<T>(x): reinterpret the bits of a value of the same size.
#pragma once
#include <cstring>

namespace metal {

template <class To, class From> To as_type(const From& x) {
  static_assert(sizeof(To) == sizeof(From), "as_type: source and destination must have the same size");
  To r;
  std::memcpy(static_cast<void*>(&r), static_cast<const void*>(&x), sizeof r);
  return r;
}

}  // namespace metal
