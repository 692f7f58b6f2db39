"""Cgroup names are bytes from the kernel: one rule for turning them into text.

A cgroup's name is whatever bytes its creator passed to mkdir(2) (anything but
"/" and NUL; any delegated user can make one that is not UTF-8).  tagger holds
two forms of a name:

* **internal** - ``str`` decoded the way ``os.fsdecode`` and ``os.scandir``
  decode (UTF-8, undecodable bytes as lone surrogates U+DC80..U+DCFF, PEP 383).
  Every path that enters tagger (a cgroupfs walk, a BPF mkdir event) is in this
  form, so one cgroup has one name; :func:`from_kernel` decodes raw bytes.
  ``os.fsencode`` gives the kernel's bytes back.  Such a ``str`` cannot be
  encoded as UTF-8, so it never leaves the process as is.
* **display** - what people and other programs see (Prometheus labels, socket
  replies, JSON, Redis, ``tagger top``, trace files): valid UTF-8 without
  control characters, each undecodable byte and each control character
  written ``\\xfe``, ``\\x1b``.  A backslash that would otherwise read as part
  of such an escape is doubled, so no two names display alike and
  :func:`parse` undoes :func:`display` exactly.  Other names display as
  themselves (systemd's ``\\x2d`` escapes included: only ``\\x00``..``\\x1f``,
  ``\\x7f`` and ``\\x80``..``\\xff`` are escapes here).
"""

from __future__ import annotations

import os
import re

#: The hex of an escape: a control character (C0, DEL) or an undecodable byte.
_ESCAPED_HEX = r"(?:[01][0-9a-f]|7f|[89a-f][0-9a-f])"
#: A run of backslashes before a character to escape, or before text that reads as an escape.
_TO_DISPLAY = re.compile(r"(\\*)(?:([\x00-\x1f\x7f\udc80-\udcff])|(?=x" + _ESCAPED_HEX + "))")
#: A run of backslashes and the escape after it: an odd run ends in an escape.
_FROM_DISPLAY = re.compile(r"(\\+)x(" + _ESCAPED_HEX + ")")


def from_kernel(raw: bytes) -> str:
    """The internal form of a name or path the kernel gave as bytes (equal to
    what ``os.scandir`` yields for the same directory)."""
    return os.fsdecode(bytes(raw))


def _escape(m: re.Match) -> str:
    run, char = m.group(1), m.group(2)
    if not char:
        return run * 2
    code = ord(char)
    return run * 2 + f"\\x{code - 0xDC00 if code >= 0xDC00 else code:02x}"


def display(name: str) -> str:
    """The display form of an internal name (valid UTF-8, no control
    characters, injective)."""
    if "\\" not in name and name.isprintable():
        return name                 # the common case: nothing to escape
    return _TO_DISPLAY.sub(_escape, name)


def _unescape(m: re.Match) -> str:
    run, hex_byte = m.group(1), m.group(2)
    if len(run) % 2 == 0:
        return run[:len(run) // 2] + "x" + hex_byte
    code = int(hex_byte, 16)
    return run[:len(run) // 2] + chr(code if code < 0x80 else 0xDC00 + code)


def parse(text: str) -> str:
    """The internal form of a display name (``parse(display(n)) == n``); text
    that holds no escape is returned unchanged."""
    if "\\" not in text:
        return text
    return _FROM_DISPLAY.sub(_unescape, text)
