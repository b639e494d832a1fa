"""The failover engine's vocabulary: attempts, verdicts, retry and hedging policies, budgets.

``LoadBalancer.call`` and ``LoadBalancer.acall`` run the engine; integrations supply a
classifier that turns each attempt into a ``Verdict``.
"""

from ._budget import RetryBudget as RetryBudget
from ._budget import RetryBudgetStats as RetryBudgetStats
from ._policy import MAX_ATTEMPTS as MAX_ATTEMPTS
from ._policy import Attempt as Attempt
from ._policy import AttemptTimeoutError as AttemptTimeoutError
from ._policy import Classifier as Classifier
from ._policy import HedgingPolicy as HedgingPolicy
from ._policy import RetryPolicy as RetryPolicy
from ._policy import Verdict as Verdict
from ._policy import retry_on_exception as retry_on_exception

__all__ = [
    "MAX_ATTEMPTS",
    "Attempt",
    "AttemptTimeoutError",
    "Classifier",
    "HedgingPolicy",
    "RetryBudget",
    "RetryBudgetStats",
    "RetryPolicy",
    "Verdict",
    "retry_on_exception",
]
