#!/usr/bin/env python3
"""Fetches the ONNX Runtime shared library that Loupe loads at run time.

The library comes from the PyPI wheel `onnxruntime==1.31.1` (the only place
this project may download from besides crates.io), fetched with pip for this
machine's architecture, checked against the sha256 pinned below, and the one
file Loupe needs, `onnxruntime/capi/libonnxruntime.so.1.31.1`, is unpacked
into `.loupe/onnxruntime/`, with the wheel's licence files beside it
(`LICENSE`, `ThirdPartyNotices.txt`: `make dist` ships them). When those
files are already there (the library with the pinned hash), nothing is
downloaded.

Usage: python3 scripts/setup_onnxruntime.py [--dest DIR]
"""

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.31.1"
LIBRARY = f"libonnxruntime.so.{VERSION}"
MEMBER = f"onnxruntime/capi/{LIBRARY}"
# The licence of ONNX Runtime and the notices of what it links in, shipped
# with the library by `make dist`.
LICENCES = ["onnxruntime/LICENSE", "onnxruntime/ThirdPartyNotices.txt"]

# The wheel's Python tag does not matter for the C library inside, so one
# wheel per architecture is pinned (cp312), whatever python3 runs this.
PINS = {
    "x86_64": {
        "wheel": f"onnxruntime-{VERSION}-cp312-cp312-manylinux_2_28_x86_64.whl",
        "wheel_sha256": "1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536",
        "library_sha256": "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
    },
    "aarch64": {
        "wheel": f"onnxruntime-{VERSION}-cp312-cp312-manylinux_2_28_aarch64.whl",
        "wheel_sha256": "0b9a492176886992e0e875f06bc0367e333f5fff11711a2d642e18b02f3009cc",
        "library_sha256": "8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467",
    },
}

ROOT = Path(__file__).resolve().parent.parent


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fail(message: str) -> None:
    """Prints one line and exits with status 1."""
    print(f"setup_onnxruntime: {message}", file=sys.stderr)
    sys.exit(1)


def fetch_wheel(pin: dict, arch: str, wheels: Path) -> Path:
    """Downloads the pinned wheel with pip (unless present) and checks it."""
    wheel = wheels / pin["wheel"]
    if not (wheel.is_file() and sha256(wheel) == pin["wheel_sha256"]):
        wheels.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", "--platform", f"manylinux_2_28_{arch}",
            "--dest", str(wheels), f"onnxruntime=={VERSION}",
        ]
        print(f"setup_onnxruntime: downloading onnxruntime=={VERSION} for {arch} with pip")
        if subprocess.run(command).returncode != 0:
            fail("pip could not download the wheel (is PyPI reachable?)")
    if not wheel.is_file():
        fail(f"pip did not produce {wheel}")
    actual = sha256(wheel)
    if actual != pin["wheel_sha256"]:
        fail(f"{wheel.name} has sha256 {actual}, expected {pin['wheel_sha256']}; refusing it")
    return wheel


def unpack(wheel: Path, target: Path, expected_sha256: str) -> None:
    """Extracts the library to `target` through a temporary file and a rename,
    so an interrupted run never leaves a half-written library behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.NamedTemporaryFile(
        dir=target.parent, delete=False
    ) as temporary:
        with archive.open(MEMBER) as member:
            for chunk in iter(lambda: member.read(1 << 20), b""):
                temporary.write(chunk)
        temporary.flush()
        os.fsync(temporary.fileno())
    temporary_path = Path(temporary.name)
    actual = sha256(temporary_path)
    if actual != expected_sha256:
        temporary_path.unlink()
        fail(f"{MEMBER} has sha256 {actual}, expected {expected_sha256}")
    temporary_path.chmod(0o755)
    temporary_path.replace(target)


def unpack_licences(wheel: Path, folder: Path) -> None:
    """Extracts the wheel's licence files into `folder` (each through a
    temporary file and a rename)."""
    with zipfile.ZipFile(wheel) as archive:
        for member in LICENCES:
            target = folder / Path(member).name
            temporary = target.with_name(target.name + ".part")
            temporary.write_bytes(archive.read(member))
            temporary.replace(target)
            print(f"setup_onnxruntime: unpacked {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".loupe", help="set-up folder")
    args = parser.parse_args()

    arch = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    if platform.system() != "Linux" or arch not in PINS:
        fail(f"no pinned ONNX Runtime wheel for {platform.system()} {arch}; "
             "pass --onnxruntime PATH to loupe with your own libonnxruntime 1.31+")
    pin = PINS[arch]
    target = args.dest / "onnxruntime" / LIBRARY
    licences = [target.parent / Path(member).name for member in LICENCES]
    library_ok = target.is_file() and sha256(target) == pin["library_sha256"]
    if library_ok and all(licence.is_file() for licence in licences):
        print(f"setup_onnxruntime: {target} is in place")
        return
    wheel = fetch_wheel(pin, arch, args.dest / "wheels")
    if not library_ok:
        unpack(wheel, target, pin["library_sha256"])
        print(f"setup_onnxruntime: unpacked {target}")
    unpack_licences(wheel, target.parent)


if __name__ == "__main__":
    main()
