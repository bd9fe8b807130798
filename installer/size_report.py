"""The size of a built bundle and its largest parts: ``python installer/size_report.py dist/SynerMedGen
[--top N]`` prints the total, the largest top-level parts (packages and libraries under ``_internal``),
the largest files, and any CUDA libraries found (a CPU bundle should have none)."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CUDA_LIBRARY = re.compile(r"^(lib)?(cuda|cudart|cublas|cudnn|cufft|curand|cusolver|cusparse|nccl|nvrtc|nvjitlink|"
                          r"nvtoolsext|nvinfer|torch_cuda|onnxruntime_providers_(cuda|tensorrt))[\w-]*"
                          r"(\.so(\.[\d.]+)?|\.dll|(\.[\d.]+)?\.dylib)$", re.IGNORECASE)


def is_cuda_library(name: str) -> bool:
    """Whether a file name is that of a CUDA / cuDNN / TensorRT shared library (or a provider using them)."""
    return bool(CUDA_LIBRARY.match(name))


def mib(size: int) -> str:
    return f"{size / 2**20:8.1f} MiB"


def files(folder: Path) -> dict[Path, int]:
    """Every regular file under ``folder`` (links not followed) and its size in bytes."""
    return {p: p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def part_of(path: Path, bundle: Path) -> str:
    """The top-level part a file belongs to: its first folder under _internal (or the bundle)."""
    relative = path.relative_to(bundle)
    parts = relative.parts[1:] if relative.parts[0] == "_internal" else relative.parts
    return parts[0] if len(parts) > 1 else "(single files)"


def report(bundle: Path, top: int) -> str:
    sizes = files(bundle)
    if not sizes:
        raise ValueError(f"{bundle}: no files (is it a built bundle?)")
    parts: dict[str, int] = {}
    for path, size in sizes.items():
        name = part_of(path, bundle)
        parts[name] = parts.get(name, 0) + size
    total = sum(sizes.values())
    lines = [f"bundle {bundle}: {mib(total).strip()} in {len(sizes)} files", f"largest {top} parts:"]
    lines += [f"  {mib(size)}  {name}" for name, size in sorted(parts.items(), key=lambda kv: -kv[1])[:top]]
    lines.append(f"largest {top} files:")
    lines += [f"  {mib(size)}  {path.relative_to(bundle)}"
              for path, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:top]]
    cuda = sorted(str(p.relative_to(bundle)) for p in sizes if is_cuda_library(p.name))
    lines.append(f"CUDA libraries: {', '.join(cuda) if cuda else 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle folder, e.g. dist/SynerMedGen")
    parser.add_argument("--top", type=int, default=12, help="how many parts and files to list (default 12)")
    args = parser.parse_args(argv)
    try:
        print(report(args.bundle, args.top))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
