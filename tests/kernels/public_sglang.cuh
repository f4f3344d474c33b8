// Instantiates SGLang's gated-activation kernel (act_and_mul_kernel of its JIT kernels' elementwise/activation.cuh)
// from the published sglang wheel, which tests/test_public_kernels.py finds, copies with its listed guards of host
// code, and puts on the include path. Nothing of SGLang is in this repository.
//
// The kernel takes its arguments as one struct by value, which the test builds with ctypes. The checks below make
// a struct that differs from the test's mirror a compile error, instead of a kernel that reads the wrong bytes: the
// fields in this order (designated initializers must follow the declaration order), each of the size the test
// passes as -DPUBLIC_SIZE_<field>=<bytes>, and the whole of -DPUBLIC_PARAMS_SIZE bytes. With natural alignment
// that fixes every offset. (NVRTC has no __builtin_offsetof, so offsets cannot be checked at compile time.)
#pragma once

#include <csrc/elementwise/activation.cuh>

static_assert(sizeof(sglang::ActivationParams{.input = nullptr, .out = nullptr, .hidden_dim = 0u, .num_tokens = 0u,
                                              .expert_ids = nullptr, .expert_step = 0u, .clamp_limit = 0.0f,
                                              .sorted_token_ids = nullptr, .num_tokens_post_padded = nullptr,
                                              .num_valid_tokens = 0u}) == PUBLIC_PARAMS_SIZE,
              "sglang::ActivationParams differs in size from the test's ctypes mirror");

#define PUBLIC_CHECK_FIELD(field)                                               \
  static_assert(sizeof(sglang::ActivationParams::field) == PUBLIC_SIZE_##field, \
                "sglang::ActivationParams::" #field " differs in size from the test's ctypes mirror")

PUBLIC_CHECK_FIELD(input);
PUBLIC_CHECK_FIELD(out);
PUBLIC_CHECK_FIELD(hidden_dim);
PUBLIC_CHECK_FIELD(num_tokens);
PUBLIC_CHECK_FIELD(expert_ids);
PUBLIC_CHECK_FIELD(expert_step);
PUBLIC_CHECK_FIELD(clamp_limit);
PUBLIC_CHECK_FIELD(sorted_token_ids);
PUBLIC_CHECK_FIELD(num_tokens_post_padded);
PUBLIC_CHECK_FIELD(num_valid_tokens);

#undef PUBLIC_CHECK_FIELD
