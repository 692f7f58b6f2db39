"""tagger's front ends: click commands and the live view (installed as tagger.cli)."""

import sys as _sys

from tagger.cli.early import install_for as _install_for

# Before click and every other import: `tagger run` must hear SIGTERM from its
# first moment (tagger.cli.early).
_install_for(_sys.argv)
