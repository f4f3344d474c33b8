/// @file packed.cuh
/// @brief Rows held as 32-bit words (two fp16 or bf16 values, or one fp32 value each), unpacked to fp32 for math.
///
/// Memory-bound kernels load 16-byte vectors and keep them in registers while they reduce or wait. Held as
/// arrays of fp16_t / bf16_t, the compiler splits them into one register per 16-bit value (twice the registers,
/// plus a repacking instruction per pair on the way out); held as 32-bit words, a 16-byte vector stays in four
/// registers, a pair converts to two floats with two integer instructions (bf16) or two conversions (fp16), and
/// two floats round back into one word with one instruction (cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32: round to
/// nearest even, as torch rounds).
///
/// `Packed<T>` is the per-dtype part: how many values a word holds, unpack / pack, and loads and stores of a single
/// value as raw bits (for rows that are not 16-byte aligned).
#ifndef CUJIT_KERNELS_PACKED_CUH_
#define CUJIT_KERNELS_PACKED_CUH_

#include <cujit/base.cuh>
#include <cujit/types.cuh>

namespace packed {

template <typename T>
struct Packed;

template <>
struct Packed<fp32_t> {
  static constexpr int kPerWord = 1;
  static CUJIT_DEVICE void unpack(uint32_t word, float (&f)[1]) { f[0] = __uint_as_float(word); }
  static CUJIT_DEVICE uint32_t pack(const float (&f)[1]) { return __float_as_uint(f[0]); }
  static CUJIT_DEVICE uint32_t load_one(const fp32_t* p) { return __float_as_uint(*p); }
  static CUJIT_DEVICE void store_one(fp32_t* p, uint32_t bits) { *p = __uint_as_float(bits); }
};

template <>
struct Packed<bf16_t> {
  static constexpr int kPerWord = 2;
  /// A bf16 value is the upper half of the fp32 with the same bits: shifting is the whole conversion.
  static CUJIT_DEVICE void unpack(uint32_t word, float (&f)[2]) {
    f[0] = __uint_as_float(word << 16);
    f[1] = __uint_as_float(word & 0xffff0000u);
  }
  static CUJIT_DEVICE uint32_t pack(const float (&f)[2]) {
    const bf16x2_t pair = __floats2bfloat162_rn(f[0], f[1]);  // .x (the lower address) from f[0]
    return *reinterpret_cast<const uint32_t*>(&pair);
  }
  static CUJIT_DEVICE uint32_t load_one(const bf16_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
  static CUJIT_DEVICE void store_one(bf16_t* p, uint32_t bits) {
    *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(bits);
  }
};

template <>
struct Packed<fp16_t> {
  static constexpr int kPerWord = 2;
  static CUJIT_DEVICE void unpack(uint32_t word, float (&f)[2]) {
    const float2 pair = __half22float2(*reinterpret_cast<const fp16x2_t*>(&word));
    f[0] = pair.x;
    f[1] = pair.y;
  }
  static CUJIT_DEVICE uint32_t pack(const float (&f)[2]) {
    const fp16x2_t pair = __floats2half2_rn(f[0], f[1]);
    return *reinterpret_cast<const uint32_t*>(&pair);
  }
  static CUJIT_DEVICE uint32_t load_one(const fp16_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
  static CUJIT_DEVICE void store_one(fp16_t* p, uint32_t bits) {
    *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(bits);
  }
};

/// A 16-byte vector as four words; `Vec16Words<T>::kValues` values of T.
template <typename T>
struct Vec16Words {
  static constexpr int kPerWord = Packed<T>::kPerWord;
  static constexpr int kValues = 4 * kPerWord;
  uint32_t w[4];

  /// Load 16 bytes from `p` (16-byte aligned).
  CUJIT_DEVICE static Vec16Words load(const T* p) {
    const uint4 bits = *reinterpret_cast<const uint4*>(p);
    return {{bits.x, bits.y, bits.z, bits.w}};
  }
  /// Load 16 bytes from `p` (16-byte aligned), marked as read once: evict-first in L1 and L2, so that streaming
  /// through a large input does not push out data that will be read again.
  CUJIT_DEVICE static Vec16Words load_streaming(const T* p) {
    const uint4 bits = __ldcs(reinterpret_cast<const uint4*>(p));
    return {{bits.x, bits.y, bits.z, bits.w}};
  }
  /// Store 16 bytes to `p` (16-byte aligned).
  CUJIT_DEVICE void store(T* p) const { *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]); }
  CUJIT_DEVICE static Vec16Words zeros() { return {{0u, 0u, 0u, 0u}}; }
};

}  // namespace packed

#endif  // CUJIT_KERNELS_PACKED_CUH_
