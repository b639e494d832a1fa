"""``loadbalancer simulate``: strategies compared on a simulated cluster, in virtual time.

Load a scenario (``load_scenario(path)``, ``parse_scenario(toml_dict)`` or
``default_scenario()``), run it with ``run_scenario(scenario, seed=...)``, and read the
``Results``. The report and plot modules turn results into a table, JSON or a picture.
"""

from .engine import run_scenario as run_scenario
from .results import Results as Results
from .results import StrategyResult as StrategyResult
from .scenario import Scenario as Scenario
from .scenario import ScenarioError as ScenarioError
from .scenario import default_scenario as default_scenario
from .scenario import load_scenario as load_scenario
from .scenario import parse_scenario as parse_scenario

__all__ = [
    "Results",
    "Scenario",
    "ScenarioError",
    "StrategyResult",
    "default_scenario",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]
