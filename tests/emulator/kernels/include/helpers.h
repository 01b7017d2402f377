// A project header found through compile(include_dirs=...).
#pragma once

inline float square(float v) { return v * v; }
