"""Mutation check of the CUDA and AMX test suites: inject realistic kernel/dispatch bugs one at a time into a copy of
the tree, rebuild it (CUDA for the emulator; the CPU engine's AMX path runs on the amx_model build), run the tests
of that path, and report which bugs the suite catches.

    python scripts/mutation_check.py [--only NAME ...] [--keep DIR]

Needs the C++ toolchain, GoogleTest and torch (as scripts/test.sh); no GPU and no CUDA toolkit (the copy is built with
LONGATTN_CUDA=OFF: the emulator compiles the CUDA sources with the host compiler). Takes about a minute per mutant
on a 2-core machine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (name, file, original text, mutated text): each a bug someone could write.
MUTANTS = [
    ("P fragment index", "csrc/cuda/flash_fwd.cuh",
     "a[1] = Atom::pack(p[2 * kk][2], p[2 * kk][3]);", "a[1] = Atom::pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);"),
    ("K ldmatrix address", "csrc/cuda/flash_fwd.cuh",
     "row = n * 8 + (mi / 2) * 8 + lane % 8, col = ks * 16 + (mi % 2) * 8;",
     "row = n * 8 + (mi % 2) * 8 + lane % 8, col = ks * 16 + (mi / 2) * 8;"),
    ("window bound off by one", "csrc/cuda/flash_fwd.cuh",
     "return t >= lo(u) && t <= hi(u) && t < n_keys;", "return t >= lo(u) && t < hi(u) && t < n_keys;"),
    ("missing __syncthreads before the next tile", "csrc/cuda/flash_fwd.cuh",
     "      __syncthreads();  // sK and sV are overwritten by the next tile\n", "\n"),
    ("missing __syncthreads after the K tile lands", "csrc/cuda/flash_fwd.cuh",
     "      ptx::cp_async_wait_group<0>();\n      __syncthreads();\n      load_tile(sV,",
     "      ptx::cp_async_wait_group<0>();\n      load_tile(sV,"),
    ("missing cp.async wait before P.V", "csrc/cuda/flash_fwd.cuh",
     "      ptx::cp_async_wait_group<0>();\n      __syncthreads();\n      warp_pv<Elem, D>(o, s, sV, lane);",
     "      __syncthreads();\n      warp_pv<Elem, D>(o, s, sV, lane);"),
    ("rows outside the tensor not zero-filled (reads row 0 of the head instead: in bounds, masked)",
     "csrc/cuda/flash_fwd.cuh", "+ col, off >= 0 ? 16 : 0);", "+ col, 16);"),
    ("key rows past the end of the sequence are loaded", "csrc/cuda/flash_fwd.cuh",
     "return t < t_end ? view.residue + t * view.dilation : -1;", "return view.residue + t * view.dilation;"),
    ("online softmax: O not rescaled", "csrc/cuda/flash_fwd.cuh",
     "    o[i][2] *= alpha[1];\n    o[i][3] *= alpha[1];\n", ""),
    ("row max misses a quad partner", "csrc/cuda/flash_fwd.cuh",
     "    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));\n", ""),
    ("empty row: -inf - -inf", "csrc/cuda/flash_fwd.cuh",
     "const float ref = mx == -INFINITY ? 0.0f : mx;", "const float ref = mx;"),
    ("LSE without ln 2", "csrc/cuda/flash_fwd.cuh",
     "0.6931471805599453f * (m_row[rr] + log2f(l_row[rr]));", "(m_row[rr] + log2f(l_row[rr]));"),
    ("GQA head mapping of packed views", "csrc/cuda/flash_fwd.cuh",
     "v.head0 = p.group > 1 ? hz * p.group : hz;", "v.head0 = hz;"),
    ("GQA head mapping of the float32 kernel", "csrc/cuda/simt_fwd.cu",
     "hk = h / p.kv_group;", "hk = h % p.heads_k;"),
    ("residue class ignores the Sq/Sk offset", "csrc/cuda/flash_fwd.cuh",
     "const int r = ((slot + offset) % d + d) % d;", "const int r = slot % d;"),
    ("global key counted twice", "csrc/cuda/flash_fwd.cuh",
     "visible = !(in_class && view.in_band(u, (pos - view.residue) / view.dilation));", "visible = true;"),
    ("epilogue column index", "csrc/cuda/flash_fwd.cuh",
     "MmaAtom<Elem>::store2(row + n * 8 + tig * 2,", "MmaAtom<Elem>::store2(row + n * 8 + tig,"),
    ("causal not folded into the window", "csrc/cuda/cuda_backend.cu",
     "f.window_right = p.causal ? 0 :", "f.window_right = false ? 0 :"),
    ("float32 kernel: warp sum from lane 8", "csrc/cuda/flash_params.h",
     "for (int o = 16; o > 0; o /= 2)", "for (int o = 8; o > 0; o /= 2)"),
    ("global index: missing barrier after the warp counts", "csrc/cuda/simt_fwd.cu",
     "    if (lane == 0) warp_total[warp] = __popc(ballot);\n    __syncthreads();\n",
     "    if (lane == 0) warp_total[warp] = __popc(ballot);\n"),
    ("key padding ignored", "csrc/cuda/flash_fwd.cuh",
     "(!p.kpm || key_is_real(p, b, pos))", "true"),
    ("sink left out of the lse", "csrc/cuda/flash_fwd.cuh",
     "if (p.sinks) lse = lse_merge_weights(", "if (p.sinks) lse_merge_weights("),
    ("paged row: block row from the wrong division", "csrc/cuda/flash_params.h",
     "int64_t(j % p.page_size) * seq_stride", "int64_t(j / p.page_size) * seq_stride"),
    ("varlen keys offset by the query offsets", "csrc/cuda/flash_params.h",
     "(p.cu_q ? (s.k_first + j) * seq_stride", "(p.cu_q ? (s.q_first + j) * seq_stride"),
    ("split merge ignores the weights", "csrc/cuda/serving.cu",
     "acc += weights[s] * p.partial_o[", "acc += p.partial_o["),
    ("cache append at the wrong position", "csrc/cuda/serving.cu",
     "const int64_t pos = int64_t(p.cache_seqlens[b]) + t;", "const int64_t pos = int64_t(p.cache_seqlens[b]);"),
    ("LSH: hash keeps the last maximal projection", "csrc/cuda/lsh.cu",
     "if (best_max < dot) best_max = dot, arg_max = j;", "if (best_max <= dot) best_max = dot, arg_max = j;"),
    ("LSH: hash factor place value", "csrc/cuda/lsh.cu", "place *= p.factors[f];", "place *= p.factors[f] / 2;"),
    ("LSH: sort unstable (ranks from the later lanes)", "csrc/cuda/lsh.cu",
     "__popc(peers & ((1u << lane) - 1u))", "__popc(peers & ~((2u << lane) - 1u))"),
    ("LSH: sort scan in warp-major order", "csrc/cuda/lsh.cu",
     "return counts[(f % kSortWarps) * nb + f / kSortWarps];", "return counts[f];"),
    ("LSH: causal compares the wrong way", "csrc/cuda/lsh_params.h", "(causal && k_pos > q_pos)",
     "(causal && k_pos < q_pos)"),
    ("LSH: neighbour chunks wrap within the first round", "csrc/cuda/lsh_params.h",
     "const int64_t n = int64_t(p.rounds) * p.chunks_per_round;", "const int64_t n = p.chunks_per_round;"),
    ("LSH: keys not normalised", "csrc/cuda/lsh_fwd.cuh",
     "k_scale(tid) = pos < 0 ? 0.0f : key_scale[pos] * kLog2e;", "k_scale(tid) = pos < 0 ? 0.0f : kLog2e;"),
    ("LSH: padding keys visible", "csrc/cuda/lsh_fwd.cuh",
     "k_pad(tid) = pos >= 0 && lsh_is_padding(p, b, pos);", "k_pad(tid) = 0;"),
    ("LSH: missing barrier after the key rows' metadata", "csrc/cuda/lsh_fwd.cuh",
     "lsh_is_padding(p, b, pos);\n        }\n        __syncthreads();\n", "lsh_is_padding(p, b, pos);\n        }\n"),
    ("LSH: every round's partial written to round 0", "csrc/cuda/lsh_fwd.cuh",
     "lsh_partial_row(p, r, b, h, pos)", "lsh_partial_row(p, 0, b, h, pos)"),
    ("unpadded shared rows (bank conflicts only: no behaviour change)", "csrc/cuda/flash_fwd.cuh",
     "constexpr int smem_row() { return D + 8; }", "constexpr int smem_row() { return D; }"),
    # The CPU engine's AMX path (csrc/cpu), tested on the amx_model build (C++ *amx_model* cases, test_amx.py).
    ("AMX: V pair halves swapped", "csrc/cpu/engine.h",
     "vt[e * vt_row + j2] = uint32_t(r0[e]) | uint32_t(r1 ? r1[e] : 0) << 16;",
     "vt[e * vt_row + j2] = uint32_t(r1 ? r1[e] : 0) | uint32_t(r0[e]) << 16;"),
    ("AMX: P pair rows past the keys not zeroed", "csrc/cpu/engine.h",
     "  for (int64_t j2 = n2; j2 < k2; ++j2) std::fill(pt + j2 * kBlockQ, pt + j2 * kBlockQ + nq_pad, 0u);\n", ""),
    ("AMX: O not rescaled by alpha", "csrc/cpu/engine.h",
     "Vec::store(o + e * kBlockQ + c, Vec::mul(Vec::load(o + e * kBlockQ + c), Vec::load(alpha + c)));",
     "(void)0;"),
    ("AMX: band-edge block skip reads the first column's range", "csrc/cpu/engine.h",
     "return j <= c_last && i < ranges->hi[c_last] && i + rows > ranges->lo[j];",
     "return j <= c_last && i < ranges->hi[j] && i + rows > ranges->lo[j];"),
    ("AMX: second B tile one pair-column off", "csrc/cpu/engine.h",
     "if constexpr (NB == 2) load<kB1>(b + kk * ldb + 16, sb);", "if constexpr (NB == 2) load<kB1>(b + kk * ldb + 15, sb);"),
    ("AMX: O accumulator read without its transpose", "csrc/cpu/engine.h",
     "        transpose_o(o, nq[t], dv_pad, ws + lay.ot);\n        o = ws + lay.ot;\n", ""),
    ("AMX: LSH slot Vᵀ rows strided like an engine tile", "csrc/cpu/lsh_engine.h",
     "                             amx_vt_row(L));", "                             amx_vt_row(kBlockK));"),
    ("AMX: odd tile offset not moved back to a key pair", "csrc/cpu/engine.h",
     "if (pairs) lo = j0 + ((lo - j0) & ~int64_t(1));", "if (!kAmxTiles<T> && pairs) lo = j0 + ((lo - j0) & ~int64_t(1));"),
]

# The tests each kind of mutant is run against: (GoogleTest filter, pytest files).
SUITES = {
    "cuda": ("Emulat*", ["tests/python/test_cuda.py", "tests/python/test_cuda_serving.py",
                         "tests/python/test_lsh_cuda.py", "tests/python/test_emulator_layouts.py"]),
    "amx": ("*amx_model*", ["tests/python/test_amx.py"]),
}


def suite_of(path: str) -> str:
    return "amx" if path.startswith("csrc/cpu/") else "cuda"


def run(cmd, cwd, env=None, timeout=1800):
    t = time.time()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr, time.time() - t


def first_failure(output: str) -> str:
    """The first failing test, and whether the emulator's memory checker or a wrong value failed it."""
    test = "build or run failed"
    for line in output.splitlines():
        if line.startswith("[  FAILED  ]") or line.startswith("FAILED "):
            test = line.replace("[  FAILED  ] ", "").replace("FAILED ", "").split(" - ")[0].split(" (")[0].strip()
            break
    at = output.find("CUDA emulator: ")
    if at >= 0:
        what = output[at + len("CUDA emulator: "):].split("[kernel")[0].split("\n")[0].strip()
        return f"{test} — memory checker: {what[:110]}"
    return f"{test} — wrong values"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="names of mutants to run (substring match)")
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args()
    work = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="longattn-mutants-"))
    tree, build = work / "tree", work / "build"
    if tree.exists():
        shutil.rmtree(tree)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tree / f)
    pybind = subprocess.run([sys.executable, "-m", "pybind11", "--cmakedir"], capture_output=True, text=True,
                            check=True).stdout.strip()
    rc, out, _ = run(["cmake", "-S", str(tree), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                      "-DLONGATTN_CUDA=OFF", "-DLONGATTN_BUILD_TESTS=ON", "-DLONGATTN_BUILD_PYTHON=ON",
                      f"-Dpybind11_DIR={pybind}", f"-DPython_EXECUTABLE={sys.executable}"], cwd=work)
    if rc:
        print(out)
        return 1
    # Python runs the copy: no site hooks (an editable install would redirect `import longattn`), site-packages on
    # the path after the copy's package.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "python"), sysconfig.get_paths()["purelib"]]))
    suffix = sysconfig.get_config_var("EXT_SUFFIX")

    def build_and_test(suites):
        rc, out, _ = run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2)], cwd=work)
        if rc:
            return "build failed", out
        shutil.copy2(build / f"_C{suffix}", tree / "python" / "longattn" / f"_C{suffix}")
        for suite in suites:
            gtest_filter, pytest_files = SUITES[suite]
            rc, out, _ = run([str(build / "longattn_tests"), f"--gtest_filter={gtest_filter}", "--gtest_brief=1"],
                             cwd=build)
            if rc:
                return "C++: " + first_failure(out), out
            rc, out, _ = run([sys.executable, "-S", "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                              *[str(tree / f) for f in pytest_files]], cwd=tree, env=env)
            if rc:
                return "pytest: " + first_failure(out).replace(str(tree) + "/", ""), out
        return None, out

    selected = [m for m in MUTANTS if not args.only or any(o in m[0] for o in args.only)]
    suites = sorted({suite_of(path) for _, path, _, _ in selected})
    print(f"baseline (no mutant; suites {', '.join(suites)}) ...", flush=True)
    failure, out = build_and_test(suites)
    if failure:
        print(f"the unmutated tree fails: {failure}\n{out[-3000:]}")
        return 1
    rows = []
    for name, path, old, new in selected:
        src = tree / path
        text = src.read_text()
        if text.count(old) != 1:
            rows.append((name, path, "NOT APPLIED (pattern not found once)", ""))
            continue
        src.write_text(text.replace(old, new))
        t = time.time()
        failure, _ = build_and_test([suite_of(path)])
        src.write_text(text)
        rows.append((name, path, "caught" if failure else "missed", failure or "", ))
        print(f"{name}: {rows[-1][2]} {failure or ''} ({time.time() - t:.0f} s)", flush=True)
    print("\n| mutant | file | result | first failing test |\n| --- | --- | --- | --- |")
    for name, path, result, how in rows:
        print(f"| {name} | `{path}` | {result} | {how} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
