"""Cgroup path globs and the path/name part of selectors, and their cache across
cgroup table changes."""

from __future__ import annotations

import numpy as np
import pytest

from tagger.cgroupglob import GlobError, literal_prefix
from tagger.rules.selectors import PathSelector, SelectorCache
from tagger.rules.spec import Selector


def matches(glob, path, exclude=(), names=(), name=None):
    sel = PathSelector(Selector(cgroup=(glob,) if glob else (), exclude=tuple(exclude),
                                names=tuple(names)))
    return sel.match_one(path, name if name is not None else path.rsplit("/", 1)[-1])


@pytest.mark.parametrize("glob, path, want", [
    ("/**", "/", True),
    ("/**", "/a/b/c", True),
    ("/", "/", True),
    ("/", "/a", False),
    ("/kubepods/**", "/kubepods", True),
    ("/kubepods/**", "/kubepods/besteffort/pod1/c", True),
    ("/kubepods/**", "/kubepodsx", False),
    ("/kubepods/*", "/kubepods/a", True),
    ("/kubepods/*", "/kubepods/a/b", False),
    ("/kubepods/*/c", "/kubepods/a/c", True),
    ("/a/**/c", "/a/c", True),
    ("/a/**/c", "/a/x/y/c", True),
    ("/a/**/c", "/a/x/y/cd", False),
    ("/k/pod*/**", "/k/podabc/x", True),
    ("/k/pod?", "/k/pod1", True),
    ("/k/pod?", "/k/pod12", False),
    ("/system.slice/*.service", "/system.slice/sshd.service", True),
    ("/system.slice/*.service", "/system.slice/sshdxservice", False),   # "." is literal
])
def test_glob_semantics(glob, path, want):
    assert matches(glob, path) is want


@pytest.mark.parametrize("glob, message", [
    ("kubepods/**", "must start with"),
    ("/a/b**", "whole path segment"),
    ("/a//b", "empty path segment"),
    ("", "non-empty"),
])
def test_bad_globs(glob, message):
    with pytest.raises(GlobError, match=message):
        PathSelector(Selector(cgroup=(glob,)))


def test_exclude_and_names():
    assert matches("/**", "/system.slice/x", exclude=["/system.slice/**"]) is False
    assert matches("/**", "/a/web-1", names=["web-*"]) is True
    assert matches("/**", "/a/db-1", names=["web-*"]) is False
    assert matches(None, "/anything", names=["nginx"], name="nginx") is True


def test_literal_prefix():
    assert literal_prefix("/kubepods/besteffort/**") == "/kubepods/besteffort/"
    assert literal_prefix("/a/b") == "/a/b"


def test_cache_carries_masks_through_a_gather_and_matches_only_new_rows():
    sel = PathSelector(Selector(cgroup=("/a/**",)))
    calls = []
    real = sel.match_one
    sel.match_one = lambda p, n: (calls.append(p), real(p, n))[1]
    cache = SelectorCache()
    key = cache.add(sel)
    cache.retable(["/a/1", "/b/1", "/a/2"], ["1", "1", "2"], None)
    assert cache.mask(key).tolist() == [True, False, True]
    calls.clear()
    # "/b/1" vanished, "/a/3" is new, the rest moved
    cache.retable(["/a/2", "/a/3", "/a/1"], ["2", "3", "1"], np.array([2, -1, 0]))
    assert cache.mask(key).tolist() == [True, True, True]
    assert calls == ["/a/3"]
