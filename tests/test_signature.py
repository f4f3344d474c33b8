"""The Itanium name reader of signature.py, on literal lowered names as NVRTC gives them (no compiler needed)."""

from __future__ import annotations

import pytest

from cujit._runtime.signature import parse_probe, probe_expression

CASES = [
    # plain(float*, const double*, int32_t, uint64_t, bool, int8_t, uint16_t)
    ("_ZN12cujit_detail15signature_probeIFvPfPKdimbatEEEvv",
     [("pointer", "float*"), ("pointer", "const double*"), ("int", "int"), ("uint", "unsigned long"),
      ("bool", "bool"), ("int", "signed char"), ("uint", "unsigned short")]),
    # tmpl<fp16_t, 4>(T*, const T*, outer::inner::Box, outer::inner::Arr<T, 4>, T, outer::inner::Box): substitutions
    ("_ZN12cujit_detail15signature_probeIFvP6__halfPKS1_N5outer5inner3BoxENS6_3ArrIS1_Li4EEES1_S7_EEEvv",
     [("pointer", "__half*"), ("pointer", "const __half*"), ("record", "outer::inner::Box"),
      ("record", "outer::inner::Arr<__half, 4>"), ("float", "__half"), ("record", "outer::inner::Box")]),
    # halfs(fp16_t, bf16_t, fp16_t*, const bf16_t* __restrict__, long long, unsigned long long, char)
    ("_ZN12cujit_detail15signature_probeIFv6__half13__nv_bfloat16PS1_PKS2_xycEEEvv",
     [("float", "__half"), ("bf16", "__nv_bfloat16"), ("pointer", "__half*"), ("pointer", "const __nv_bfloat16*"),
      ("int", "long long"), ("uint", "unsigned long long"), ("int", "char")]),
    # tmpl<float, 2>
    ("_ZN12cujit_detail15signature_probeIFvPfPKfN5outer5inner3BoxENS5_3ArrIfLi2EEEfS6_EEEvv",
     [("pointer", "float*"), ("pointer", "const float*"), ("record", "outer::inner::Box"),
      ("record", "outer::inner::Arr<float, 2>"), ("float", "float"), ("record", "outer::inner::Box")]),
    # no parameters
    ("_ZN12cujit_detail15signature_probeIFvvEEEvv", []),
]


@pytest.mark.parametrize(("lowered", "expected"), CASES, ids=[c[0][36:60] for c in CASES])
def test_lowered_names_read_back_to_the_declared_parameters(lowered: str, expected: list[tuple[str, str]]) -> None:
    params = parse_probe(lowered)
    assert params is not None
    assert [(p.kind, p.cpp) for p in params] == expected


def test_sizes_and_struct_codes() -> None:
    params = parse_probe(CASES[2][0])
    assert params is not None
    assert [(p.size, p.code) for p in params] == [(2, "e"), (2, "H"), (8, "Q"), (8, "Q"), (8, "q"), (8, "Q"),
                                                 (1, "b")]
    records = parse_probe(CASES[1][0])
    assert records is not None and records[2].size == 0  # a struct's size comes from the driver


@pytest.mark.parametrize("lowered", [
    "_Z3fooPf",                                         # not a probe
    "_ZN12cujit_detail15signature_probeIFvPfXadL_Z1xEEEEvv",  # an expression it does not read
    "_ZN12cujit_detail15signature_probeIFvPf",          # cut short
])
def test_names_it_cannot_read_give_none(lowered: str) -> None:
    assert parse_probe(lowered) is None


def test_probe_expression_wraps_decltype() -> None:
    assert probe_expression("k<float, 4>") == "cujit_detail::signature_probe<decltype(k<float, 4>)>"
