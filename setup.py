"""Compiles the Cython sources in native/ into the artifactstore package."""

import platform

from Cython.Build import cythonize
from setuptools import Extension, setup

# On x86, xxh3 picks SSE2, AVX2 or AVX-512 when the module loads (xxHash's dispatcher, compiled
# for the baseline CPU): twice to three times the speed of the SSE2 build on the chunks loads check.
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

extensions = [
    Extension(
        "artifactstore._fastcdc",
        ["native/fastcdc.pyx"],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "artifactstore._checksum",
        ["native/checksum.pyx", *(["native/xxhash/xxh_x86dispatch.c"] if X86 else [])],
        include_dirs=["native/xxhash"],
        define_macros=[("ARTIFACTSTORE_XXH_DISPATCH", "1")] if X86 else [],
        extra_compile_args=["-O3"],
    ),
    Extension("artifactstore._mapping", ["native/mapping.pyx"]),
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"binding": False}))
