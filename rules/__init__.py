"""The default rules directory, shipped as package data (tagger.default_rules).

Only the *.yaml files here are rules; tests/ holds their `tagger rules test` files.
"""

from pathlib import Path

DIRECTORY = Path(__file__).parent
