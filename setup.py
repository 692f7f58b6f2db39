# setuptools needs setup.py only for cffi_modules: the C hot path is compiled
# by `pip install`, never at import time.  TAGGER_NATIVE=0 builds without it
# (rules, replay and the live view over a socket need no BPF).
import os

from setuptools import setup

native = os.environ.get("TAGGER_NATIVE", "1") != "0"
setup(cffi_modules=["tagger/native/build.py:ffibuilder"] if native else [])
