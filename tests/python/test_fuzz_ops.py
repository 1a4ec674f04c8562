"""The ops' fuzzed contract (see fuzz_ops_cases.py), in a child interpreter: an abort or a
segfault there (exit by a signal) fails this test rather than ending the whole pytest run."""
import os
import subprocess
import sys
from pathlib import Path



def test_ops_return_a_correct_result_or_raise_an_ordinary_exception():
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(here), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(here / "fuzz_ops_cases.py")], cwd=here, env=env,
                          capture_output=True, text=True, timeout=600)
    report = (done.stdout + done.stderr)[-6000:]
    assert done.returncode >= 0, f"the child was killed by signal {-done.returncode} (abort/segfault):\n{report}"
    assert done.returncode == 0, report
