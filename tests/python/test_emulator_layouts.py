"""The emulator's register fragment layouts (mma.m16n8k16 A/B/C, ldmatrix.x4 and .x4.trans) against an independent
source: CuTe's MMA_Traits / Copy_Traits, read as data from the headers of the nvidia-cutlass wheel (a test-only
dependency) and evaluated here. (The C++ tests check the same instructions against a plain matmul.)"""

import ast
import importlib.util
import pathlib
import re

import pytest

from longattn import testing

pytestmark = pytest.mark.skipif(not testing.emulator_available(), reason="this build has no CUDA emulator")


def _cute_dir():
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = pathlib.Path(list(spec.submodule_search_locations)[0]) / "source" / "include" / "cute" / "atom"
    return d if d.is_dir() else None


CUTE = _cute_dir()
needs_cute = pytest.mark.skipif(CUTE is None, reason="needs the nvidia-cutlass wheel (CuTe headers)")


def parse_layout(text: str):
    """'Layout<Shape<Shape<_4,_8>,_2>, Stride<Stride<_16,_1>,_8>>' -> (shape, stride) as nested tuples."""
    body = re.sub(r"\s+", "", text)
    body = body.replace("Layout<", "(").replace("Shape<", "(").replace("Stride<", "(").replace(">", ",)")
    body = re.sub(r"_(\d+)", r"\1", body)
    shape, stride = ast.literal_eval(body)
    return shape, stride


def size(mode):
    if isinstance(mode, int):
        return mode
    n = 1
    for m in mode:
        n *= size(m)
    return n


def evaluate(shape, stride, i):
    """CuTe's layout function at a linear index: colexicographic coordinates, dotted with the strides."""
    if isinstance(shape, int):
        return (i % shape) * stride
    out = 0
    for s, d in zip(shape, stride):
        out += evaluate(s, d, i % size(s))
        i //= size(s)
    return out


def tv_layout(layout):
    """(thread, value) -> index, from a layout whose two top modes are the thread and value modes."""
    (thr_shape, val_shape), (thr_stride, val_stride) = layout
    return lambda t, v: evaluate(thr_shape, thr_stride, t) + evaluate(val_shape, val_stride, v)


def find(header: str, pattern: str) -> str:
    text = (CUTE / header).read_text()
    m = re.search(pattern, text, re.S)
    assert m, f"{pattern!r} not found in {header}"
    return m.group(1)


def mma_layouts():
    header = "mma_traits_sm80.hpp"
    traits = find(header, r"struct MMA_Traits<SM80_16x8x16_F16F16F16F16_TN>\s*\{(.*?)\};")
    out = {}
    for name in ("ALayout", "BLayout", "CLayout"):
        rhs = re.search(name + r"\s*=\s*(.*?);", traits, re.S).group(1).strip()
        if not rhs.startswith("Layout"):  # an alias such as SM80_16x8_Row
            rhs = find(header, r"using\s+" + re.escape(rhs) + r"\s*=\s*(Layout<.*?>>);")
        out[name] = tv_layout(parse_layout(rhs))
    return out


@needs_cute
@pytest.mark.parametrize("operand,cute_name,rows", [("a", "ALayout", 16), ("b", "BLayout", 8), ("c", "CLayout", 16)])
def test_mma_m16n8k16_fragments_match_cute(operand, cute_name, rows):
    # CuTe indexes A as (M, K), B as (N, K) and C as (M, N), column-major; the emulator names B's element (k, n).
    cute = mma_layouts()[cute_name]
    ours = testing.emulator_fragment_layout(f"mma.m16n8k16.{operand}")
    assert len(ours) == 32 * (8 if operand == "a" else 4)
    for lane, value, row, col, _ in ours:
        index = cute(lane, value)
        first, second = index % rows, index // rows
        got = (second, first) if operand == "b" else (first, second)
        assert (row, col) == got, f"{operand}: lane {lane} value {value}"


@needs_cute
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_x4_fragments_match_cute(trans):
    header = "copy_traits_sm75.hpp"
    atom = "SM75_U16x8_LDSM_T" if trans else "SM75_U32x4_LDSM_N"
    traits = find(header, r"struct Copy_Traits<" + atom + r">\s*\{(.*?)\};")
    src = tv_layout(parse_layout(re.search(r"SrcLayout\s*=\s*(Layout<.*?>>);", traits, re.S).group(1)))
    dst = tv_layout(parse_layout(re.search(r"DstLayout\s*=\s*(Layout<.*?>>);", traits, re.S).group(1)))
    # The source bits: thread t gives one 128-bit row (row t % 8 of matrix t // 8).
    row_of_bit = {src(t, b): (t // 8, t % 8, b // 16) for t in range(32) for b in range(0, 128, 16)}
    ours = testing.emulator_fragment_layout("ldmatrix.x4.trans" if trans else "ldmatrix.x4")
    assert len(ours) == 32 * 8
    for lane, value, row, col, matrix in ours:  # value = 2 * register + half: its first bit is 16 * value
        assert row_of_bit[dst(lane, 16 * value)] == (matrix, row, col), f"lane {lane} value {value}"
