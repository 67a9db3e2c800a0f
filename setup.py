"""Builds the compiled hot paths: every fast/*.pyx, and the Python modules of COMPILED
(pure-Python-mode Cython: the .py file is the source; compiled, its cclasses have C fields
and call each other in C through their .pxd declarations, so these modules need the build).

Metadata lives in pyproject.toml; this file exists only because extension modules
need code to describe them.
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

# The HTTP/1.1 connection machine runs a few calls per request: compiled, its fields are
# C fields and its calls C calls (about 0.2 us less per request, measured in bench/RESULTS.md).
# The HTTP/2 connection machine likewise (plain Python compiled; bench/h2machine.py).
# The reverse proxy's exchange and pipeline, likewise: about 3.5 % fewer instructions per
# proxied request (bench/proxy_callgrind.py, bench/RESULTS.md). The HTTP/1.1 connection
# (a cclass cimporting h1.pxd), the listener, router, client and the proxy's upstream:
# with the proxy's Exchange and ProxyHandler as cclasses, 71k -> 40k instructions per
# proxied request, 16.4k -> 12.3k per fixed-route answer (session 8, bench/RESULTS.md).
# The CDN's handler (farts/cdn/service.py), whose hit path runs per request: 22.6k ->
# 21.5k instructions per 1 KiB hit, 38k -> 35.5k per 100 KiB hit.
COMPILED = ["farts/transport/h1.py", "farts/transport/connection.py", "farts/transport/counts.py",
            "farts/transport/h2conn.py", "farts/transport/client.py", "farts/transport/router.py",
            "farts/transport/listener.py", "farts/transport/kit.py", "farts/proxy/handler.py",
            "farts/proxy/pipeline.py", "farts/proxy/upstream.py", "farts/cdn/service.py"]

# fast/uring.pyx links liburing (Debian: liburing-dev); without its header the module is
# not built and the pub/sub fanout uses its send() path (farts/pubsub/fanout.py).
URING = "fast/uring.pyx"
HAS_LIBURING = os.path.exists("/usr/include/liburing.h")
if not HAS_LIBURING:
    print("setup.py: no liburing.h (apt-get install liburing-dev): fast.uring not built")

extensions = [
    Extension(
        "fast." + os.path.splitext(os.path.basename(path))[0],
        [path],
        extra_compile_args=["-O3"],
        libraries=["uring"] if path == URING else [],
    )
    for path in sorted(glob.glob("fast/*.pyx"))
    if path != URING or HAS_LIBURING
] + [
    Extension(os.path.splitext(path)[0].replace("/", "."), [path], extra_compile_args=["-O3"])
    for path in COMPILED
]

# Every core for the build: a wheel build compiles every module from scratch (the release
# bundle's and the wheel test's build took 76 s on 2 cores, one module at a time).
JOBS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

setup(
    options={"build_ext": {"parallel": JOBS}},
    ext_modules=cythonize(
        extensions,
        nthreads=JOBS,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
