/// @file checks.h
/// @brief What the host programs of this folder share to compare a kernel's outputs: conversions through cujit's
/// own rules, bit equality, and the GPU tests' tolerance for one rounding to each float dtype.
#pragma once

#include <cujit/types.cuh>

#include <cstring>
#include <type_traits>

template <typename T>
T from_f(float x) { return cujit::Convert<T>::from_float(x); }

template <typename T>
float to_f(T x) { return cujit::Convert<T>::to_float(x); }

template <typename T>
bool same_bits(const T& a, const T& b) { return std::memcmp(&a, &b, sizeof(T)) == 0; }

/// Relative tolerance of one rounding to T (as tests/test_norms_gpu.py and the activations' GPU tests use).
template <typename T>
double tolerance() { return sizeof(T) == 4 ? 1e-5 : (std::is_same_v<T, fp16_t> ? 2e-3 : 1e-2); }
