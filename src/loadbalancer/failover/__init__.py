"""The failover engine's vocabulary: attempts, verdicts, retry and hedging policies, budgets.

``LoadBalancer.call`` and ``LoadBalancer.acall`` run the engine; integrations supply a
classifier that turns each attempt into a ``Verdict``. ``call_held`` and ``acall_held`` are
the same for results that outlive the call (a response body still streaming): the answer is
``Held``, its lease ended by the caller, and ``Results`` frees the results that lose.
"""

from ._budget import RetryBudget as RetryBudget
from ._budget import RetryBudgetStats as RetryBudgetStats
from ._held import AsyncResults as AsyncResults
from ._held import FirstAttempt as FirstAttempt
from ._held import Held as Held
from ._held import Results as Results
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
    "AsyncResults",
    "Attempt",
    "AttemptTimeoutError",
    "Classifier",
    "FirstAttempt",
    "HedgingPolicy",
    "Held",
    "Results",
    "RetryBudget",
    "RetryBudgetStats",
    "RetryPolicy",
    "Verdict",
    "retry_on_exception",
]
