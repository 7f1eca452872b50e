"""Errors that mean bad input rather than a bug. Each message names the file, key or line."""


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
