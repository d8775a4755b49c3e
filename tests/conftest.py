"""Shared pytest set-up: quiet TensorFlow, project root importable, CPU threads bounded."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402  (after the environment set-up above)

from tests.scripts import run_script  # noqa: E402


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """``demo.py --quick`` run once per session as a subprocess: ``(proc, output_dir,
    data_dir)``. Its trained ``ssd_160_vgg_lite`` (``<output_dir>/train/export``), TFRecords and
    eval metrics serve tests/test_demo.py and tests/test_export.py; tests must not write into
    its folders."""
    base = tmp_path_factory.mktemp("demo")
    out, data = str(base / "out"), str(base / "data")
    proc = run_script("demo.py", "--quick", f"--output_dir={out}", f"--data_dir={data}",
                      cwd=str(base), timeout=900)
    return proc, out, data
