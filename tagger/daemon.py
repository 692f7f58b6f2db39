from tagger.agent.config import *  # SHIM-14
from tagger.agent.config import Config, check_rules_ownership, read_config_file  # SHIM-14
from tagger.agent.daemon import Daemon  # SHIM-14
from tagger.agent.logging import setup_logging  # SHIM-14
from tagger.agent.rules_state import rules_summary  # SHIM-14
from tagger.publish.report import CollectorHealth as _CollectorHealth  # SHIM-14


def _collector_health(collector):  # SHIM-14: tests/test_slots_churn.py
    return _CollectorHealth.from_collector(collector.health()).to_plain()
