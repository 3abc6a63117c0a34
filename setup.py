"""Compiles the Cython sources in native/ into the artifactstore package."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "artifactstore._fastcdc",
        ["native/fastcdc.pyx"],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "artifactstore._checksum",
        ["native/checksum.pyx"],
        include_dirs=["native/xxhash"],
        extra_compile_args=["-O3"],
    ),
    Extension("artifactstore._mapping", ["native/mapping.pyx"]),
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"binding": False}))
