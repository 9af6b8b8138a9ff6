#!/usr/bin/env python3
"""Compile kernels/cuda/*.cu to kernels/ptx/*.ptx with NVRTC, and check them with ptxas.

    python3 kernels/ptx/generate.py            # regenerate the committed PTX
                                               # (and the workbench's: bench/flash/*.cu ->
                                               # bench/flash/ptx/*.ptx)
    python3 kernels/ptx/generate.py kernels/cuda/norm.cu   # only these sources
    python3 kernels/ptx/generate.py --check    # fail if the committed PTX differs from a fresh one
    python3 kernels/ptx/generate.py --ptxas    # also assemble each file for sm_90, print the
                                               # registers, spills and shared memory per kernel

NVRTC and ptxas come from NVIDIA's PyPI wheels (nvidia-cuda-nvrtc-cu12 and nvidia-cuda-nvcc-cu12,
pinned below), which run on a machine with no GPU and no CUDA toolkit. They are installed into
kernels/ptx/.venv on first use. The PTX targets compute_90 (the H200's Hopper); the driver
JIT-compiles it when a module is first loaded. Pinning the wheel pins the compiler, so the output
is byte-for-byte reproducible and CI can diff it.
"""

import argparse
import ctypes
import glob
import os
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.dirname(HERE)
SOURCES = os.path.join(KERNELS, "cuda")
# the numbered kernel versions of the flash-attention workbench (bench/flash/README.md), compiled
# the same way into their own folder, so --check covers them too
WORKBENCH = os.path.join(os.path.dirname(KERNELS), "bench", "flash")
VENV = os.path.join(HERE, ".venv")
# the compiler, ptxas, and the CUDA headers the kernels include (cuda_bf16.h)
WHEELS = [
    "nvidia-cuda-nvrtc-cu12==12.9.86",
    "nvidia-cuda-nvcc-cu12==12.9.86",
    "nvidia-cuda-runtime-cu12==12.9.79",
]
# relative to the wheels' folder, which is the working directory of a compile, so that the
# header paths PTX records (-lineinfo) do not depend on where the repository is checked out
INCLUDE = "nvidia/cuda_runtime/include"
ARCH = "compute_90"
# -lineinfo keeps source lines for profilers; no -G (device debug) and no fast-math, so the
# kernels round like the CPU reference they are tested against
OPTIONS = [f"--gpu-architecture={ARCH}", "--std=c++17", "-lineinfo", f"-I{INCLUDE}"]


def site_packages():
    pattern = os.path.join(VENV, "lib", "python3*", "site-packages")
    found = glob.glob(pattern)
    return found[0] if found else None


def ensure_wheels():
    """The wheels' folder, installing them into the venv the first time."""
    sp = site_packages()
    marker = os.path.join(VENV, "wheels.txt")
    if sp and os.path.exists(marker) and open(marker).read().split() == WHEELS:
        return sp
    print(f"installing {', '.join(WHEELS)} into {VENV}", file=sys.stderr)
    venv.create(VENV, with_pip=True)
    pip = os.path.join(VENV, "bin", "pip")
    subprocess.run([pip, "install", "--quiet", *WHEELS], check=True)
    with open(marker, "w") as f:
        f.write("\n".join(WHEELS))
    return site_packages()


class Nvrtc:
    """The few NVRTC calls a compile needs, through ctypes."""

    def __init__(self, sp):
        lib = glob.glob(os.path.join(sp, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*"))
        if not lib:
            sys.exit(f"no libnvrtc.so in {sp}/nvidia/cuda_nvrtc/lib: reinstall with rm -r {VENV}")
        self.lib = ctypes.CDLL(lib[0])
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def compile(self, path):
        """The PTX text of one .cu file; raises with NVRTC's log on a compile error."""
        src = open(path, "rb").read()
        prog = ctypes.c_void_p()
        name = os.path.basename(path).encode()
        self.check(
            self.lib.nvrtcCreateProgram(ctypes.byref(prog), src, name, 0, None, None),
            "nvrtcCreateProgram",
        )
        try:
            opts = (ctypes.c_char_p * len(OPTIONS))(*[o.encode() for o in OPTIONS])
            status = self.lib.nvrtcCompileProgram(prog, len(OPTIONS), opts)
            log = self.log(prog)
            if status != 0:
                raise RuntimeError(f"{path} does not compile:\n{log}")
            size = ctypes.c_size_t()
            self.check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            buf = ctypes.create_string_buffer(size.value)
            self.check(self.lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
            # -lineinfo's .file directives name the working directory: drop it (see INCLUDE)
            ptx = buf.value.decode().replace(f'"{os.getcwd()}/', '"')
            return ptx, log
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))

    def log(self, prog):
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(prog, buf)
        return buf.value.decode().strip()


def ptx_path(cu):
    """kernels/cuda/x.cu -> kernels/ptx/x.ptx; bench/flash/vN.cu -> bench/flash/ptx/vN.ptx."""
    stem = os.path.basename(cu)[: -len(".cu")] + ".ptx"
    if os.path.dirname(os.path.abspath(cu)) == WORKBENCH:
        return os.path.join(WORKBENCH, "ptx", stem)
    return os.path.join(HERE, stem)


def ptxas_report(sp, ptx_file):
    """ptxas -v for sm_90: one line per kernel with its registers, spills and shared memory."""
    ptxas = os.path.join(sp, "nvidia", "cuda_nvcc", "bin", "ptxas")
    out = subprocess.run(
        [ptxas, "-arch=sm_90", "-v", "-o", os.devnull, ptx_file],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ptxas rejects {ptx_file}:\n{out.stderr}")
    lines, kernel = [], None
    for line in out.stderr.splitlines():
        if "Compiling entry function" in line:
            kernel = line.split("'")[1]
        elif "Used" in line and kernel:
            lines.append(f"  {kernel}: {line.split('info    :')[-1].strip()}")
        elif "spill" in line and kernel:
            lines.append(f"  {kernel}: {line.split('info    :')[-1].strip()}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed PTX")
    parser.add_argument("--ptxas", action="store_true", help="assemble for sm_90 and report")
    parser.add_argument("sources", nargs="*", help="the .cu files to compile [default: all]")
    args = parser.parse_args()
    sources = [os.path.abspath(p) for p in args.sources]
    every = glob.glob(os.path.join(SOURCES, "*.cu")) + glob.glob(os.path.join(WORKBENCH, "*.cu"))
    sources = sources or sorted(every)
    sp = ensure_wheels()
    nvrtc = Nvrtc(sp)
    os.chdir(sp)  # see INCLUDE
    stale = []
    for cu in sources:
        ptx, log = nvrtc.compile(cu)
        if log:
            print(f"{os.path.basename(cu)}: {log}", file=sys.stderr)
        target = ptx_path(cu)
        if args.check:
            committed = open(target).read() if os.path.exists(target) else None
            if committed != ptx:
                stale.append(os.path.relpath(target, os.path.dirname(KERNELS)))
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(ptx)
        if args.ptxas:
            print(f"{os.path.relpath(target, os.path.dirname(KERNELS))} (sm_90):")
            for line in ptxas_report(sp, target if not args.check else write_temp(ptx)):
                print(line)
    if stale:
        sys.exit(
            f"stale PTX: {', '.join(stale)} differ from kernels/cuda; "
            "run python3 kernels/ptx/generate.py and commit the result"
        )
    print("ptx: up to date" if args.check else "ptx: written", file=sys.stderr)


def write_temp(ptx):
    path = os.path.join(VENV, "check.ptx")
    with open(path, "w") as f:
        f.write(ptx)
    return path


if __name__ == "__main__":
    main()
