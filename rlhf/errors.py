"""Errors that mean bad input rather than a bug. Each message names the file, key or line.

Also the exit protocol between a stage (rlhf/stages/_stage.py) and the flow that runs it (rlhf/flows/stages.py).
"""

# A judge endpoint that timed out or kept failing: worth another try later (sysexits EX_TEMPFAIL).
# The flow retries a stage, with backoff, only when it exits with this status.
TRANSIENT_EXIT = 75
# Where a stage writes its own exit status, when the environment names a file (the flow sets it):
# `dvc repro` exits 255 whatever the command's status, and its wording is no interface.
STATUS_FILE_ENV = "RLHF_STAGE_STATUS_FILE"


class InputError(ValueError):
    """Base class: a stage reports it as one line and exits with status 2."""


class ConfigError(InputError):
    """params.yaml is missing, malformed or holds a bad value."""


class PromptSourceError(InputError):
    """A prompt file is missing, malformed or empty."""


class EmptyComparisonsError(InputError):
    """The comparisons snapshot has no usable (non-tie) training pairs."""


class StoreError(InputError):
    """The feedback store could not be opened or written."""


class JudgeEndpointError(InputError):
    """A judge's endpoint timed out, refused or kept failing after its retries."""


class NoCostModelError(InputError):
    """PPO-Lagrangian needs a cost model, and train_cost had no harmlessness labels to train one."""


class TrainingStopped(RuntimeError):
    """Training met NaN/inf or crossed a safety ceiling; the message names the last good checkpoint."""
