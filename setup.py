"""Builds the compiled hot paths in fast/ (every fast/*.pyx becomes an extension module).

Metadata lives in pyproject.toml; this file exists only because extension modules
need code to describe them.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fast." + os.path.splitext(os.path.basename(path))[0],
        [path],
        extra_compile_args=["-O3"],
    )
    for path in sorted(glob.glob("fast/*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
