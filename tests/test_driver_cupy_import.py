"""The first calls into CuPy's driver and runtime bindings import no CuPy (frameworks.cupy_left_unimported).

CuPy 14's soft links report each library they load through ``import cupy``; cujit makes those first calls with a
stand-in ``cupy`` in place. Each case runs in a new interpreter, whose ``sys.modules`` holds no CuPy yet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(code: str, **env: str) -> tuple[dict[str, object], str]:
    """Run ``code`` in a new interpreter; return the JSON it prints last and its stderr."""
    environ = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if "CUPY_DEBUG_LIBRARY_LOAD" not in env:
        environ.pop("CUPY_DEBUG_LIBRARY_LOAD", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=environ,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


LOG_ONLY = """
    import json, sys
    from cujit._runtime.frameworks import cupy_left_unimported
    with cupy_left_unimported():
        import cupy  # what CuPy's soft link does to report a library it loaded
        cupy._environment._log('libcuda.so.1 loaded')
        inside = type(sys.modules['cupy']).__name__
    print(json.dumps({'inside': inside, 'after': 'cupy' in sys.modules, 'core': 'cupy._core' in sys.modules}))
"""


def test_cupys_log_is_answered_without_importing_cupy() -> None:
    found, stderr = run(LOG_ONLY)
    assert found == {"inside": "_CupyStandIn", "after": False, "core": False}
    assert "CUPY_DEBUG_LIBRARY_LOAD" not in stderr


def test_the_log_line_still_shows_where_cupy_would_show_it() -> None:
    found, stderr = run(LOG_ONLY, CUPY_DEBUG_LIBRARY_LOAD="1")
    assert not found["after"]
    assert "[CUPY_DEBUG_LIBRARY_LOAD] libcuda.so.1 loaded" in stderr


def test_anything_else_imports_the_real_cupy_and_keeps_it() -> None:
    # A thread that imports CuPy while the stand-in is in place gets all of CuPy, and keeps it afterwards.
    found, _ = run("""
        import json, sys
        from cujit._runtime.frameworks import cupy_left_unimported
        with cupy_left_unimported():
            import cupy
            version = cupy.__version__
            found = cupy._environment.get_cuda_path is not None
        import cupy as after
        print(json.dumps({'version': version, 'env': found, 'real': hasattr(after, 'ndarray'),
                          'same': sys.modules['cupy'] is after}))
    """)
    assert found["env"] and found["real"] and found["same"]
    assert isinstance(found["version"], str) and found["version"]


def test_a_thread_importing_part_of_cupy_waits_for_the_stand_in_to_leave() -> None:
    # Importing cupy.cuda under the stand-in would run that submodule twice; the block holds the import lock.
    found, _ = run("""
        import json, sys, threading, time
        from cujit._runtime.frameworks import cupy_left_unimported
        done = []
        worker = threading.Thread(target=lambda: done.append(__import__('cupy.cuda').cuda.__name__))
        with cupy_left_unimported():
            worker.start()
            time.sleep(0.3)
            during = [type(sys.modules.get('cupy')).__name__, *done]
        worker.join(timeout=120)
        import cupy
        print(json.dumps({'during': during, 'after': done, 'real': hasattr(cupy, 'ndarray')}))
    """)
    assert found == {"during": ["_CupyStandIn"], "after": ["cupy.cuda"], "real": True}


def test_a_process_that_imported_cupy_keeps_its_cupy() -> None:
    found, _ = run("""
        import json, sys
        import cupy
        from cujit._runtime.frameworks import cupy_left_unimported
        with cupy_left_unimported():
            same = sys.modules['cupy'] is cupy
        print(json.dumps({'same': same, 'after': sys.modules['cupy'] is cupy}))
    """)
    assert found == {"same": True, "after": True}


FAKE_LIBCUDA = r"""
int cuInit(unsigned flags) { return 0; }
int cuDriverGetVersion(int* version) { *version = 13000; return 0; }
int cuCtxGetCurrent(void** ctx) { *ctx = (void*)0x1234; return 0; }
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build a stand-in libcuda.so.1")
def test_the_backends_first_driver_call_imports_no_cupy(tmp_path: Path) -> None:
    # CuPy's binding loads the stand-in libcuda (three functions; the rest report "not found") and logs the load.
    (tmp_path / "fake.c").write_text(FAKE_LIBCUDA)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libcuda.so.1"), str(tmp_path / "fake.c")],
                   check=True, timeout=120)
    found, _ = run("""
        import json, sys
        from cujit._runtime.driver import CudaBackend
        backend = CudaBackend()
        print(json.dumps({'ctx': backend.ctx_get(), 'cupy': 'cupy' in sys.modules}))
    """, LD_LIBRARY_PATH=os.pathsep.join([str(tmp_path), os.environ.get("LD_LIBRARY_PATH", "")]))
    assert found == {"ctx": 0x1234, "cupy": False}
