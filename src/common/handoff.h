// Happens-before edges that ThreadSanitizer cannot see for itself, because the kernel makes them: an
// object handed from one thread to another through an EPOLLONESHOT re-arm (the thread that re-arms is done
// with it; the thread that gets the next event starts with it). HandOff::Release before the re-arm,
// HandOff::Acquire after the event: no code in other builds.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define FERRY_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FERRY_TSAN 1
#endif
#endif

#ifdef FERRY_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace ferry::HandOff {

inline void Release([[maybe_unused]] void* object) {
#ifdef FERRY_TSAN
  __tsan_release(object);
#endif
}

inline void Acquire([[maybe_unused]] void* object) {
#ifdef FERRY_TSAN
  __tsan_acquire(object);
#endif
}

}  // namespace ferry::HandOff
