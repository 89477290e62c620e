"""The one exception hierarchy of crypto-ml: every error the product raises is a CryptoMLError.

Each message says what went wrong and what to do next. Every class takes its
message as its only argument, so an error rebuilt from a JSON task result (Celery
sends ``type``, ``module`` and ``args``) reads exactly as it did on the worker.
"""

from __future__ import annotations


def caused_by_interrupt(exc: BaseException | None) -> bool:
    """Whether a KeyboardInterrupt is ``exc`` or caused it: a signal raised inside a class
    body's ``__set_name__`` (e.g. while a module imports) surfaces as a RuntimeError caused by
    it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class CryptoMLError(Exception):
    """Root of every crypto-ml error."""


class ConfigError(CryptoMLError):
    """A setting, CLI option or environment variable is wrong (exit code 2)."""


class DataNotFound(ConfigError):
    """The data directory is missing or holds no price files."""


class BrokerUnavailable(ConfigError):
    """The Redis broker cannot be reached."""


class BrokerAuthFailed(BrokerUnavailable):
    """Redis refused the user name or password of the broker URL (or the user is disabled)."""


class ClusterLost(CryptoMLError):
    """The embedded cluster's Redis exited under a run: nothing it held comes back."""


class CoinNotFound(CryptoMLError, KeyError):
    """A coin id that the data directory does not hold."""

    @classmethod
    def for_coin(cls, coin: str, suggestions: list[str]) -> CoinNotFound:
        hint = (
            f"; did you mean {', '.join(suggestions)}?"
            if suggestions
            else "; list the known ids with CryptoLoader().get_crypto_names()"
        )
        return cls(f"unknown coin {coin!r}{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SeriesTooShort(CryptoMLError, ValueError):
    """A price series with fewer points than the model needs."""

    @classmethod
    def for_series(cls, coin: str, length: int, minimum: int, model: str,
                   window: int | None = None) -> SeriesTooShort:
        """``window``: the newest-N window (``--max-points``) the series was cut to, if known;
        the advice is then the one that helps (a wider window, or a model or more data)."""
        data = "choose a model that needs less history or add data"
        wider = f"raise --max-points (max_points) to at least {minimum}, or use all"
        if window is None:
            advice = (f"if --max-points (max_points) cut it that short, raise it to at least "
                      f"{minimum} or use all; else {data}")
        else:
            advice = wider if length >= window else data
        named = f"series {coin!r}" if coin else "the series"  # a table's rows name it apart
        return cls(
            f"{named} has {length} usable points, fewer than the {minimum} "
            f"that model {model!r} needs; {advice}"
        )


class InvalidTaskInput(CryptoMLError, ValueError):
    """A task message whose arguments fail validation; it is never executed."""


class UnknownModel(ConfigError, InvalidTaskInput):
    """A model name that the registry does not hold."""


class TooManyDeliveries(CryptoMLError):
    """A task delivered more often than CRYPTO_ML_MAX_DELIVERIES: its runs keep killing workers."""

    @classmethod
    def for_task(cls, task_id: str, deliveries: int, limit: int) -> TooManyDeliveries:
        return cls(
            f"task {task_id} was delivered {deliveries} times and each earlier run died with its "
            f"worker (killed, out of memory or crashed); it is failed instead of run again "
            f"(CRYPTO_ML_MAX_DELIVERIES={limit}); check the worker logs and memory, then resend it"
        )


class TaskTimedOut(CryptoMLError):
    """A task that ran past its soft time limit and was stopped."""

    @classmethod
    def for_limit(cls, seconds: float) -> TaskTimedOut:
        return cls(
            f"the task ran past its soft time limit of {seconds:g} s and was stopped; raise "
            "CRYPTO_ML_SOFT_TIME_LIMIT (and CRYPTO_ML_HARD_TIME_LIMIT above it) on the workers, "
            "or send less work (--max-points, --epochs)"
        )


class ModelFitFailed(CryptoMLError):
    """A model library could not fit or forecast a series (e.g. a numerical failure)."""


class CalibrationTooShort(InvalidTaskInput):
    """A series too short to calibrate conformal intervals (the forecast falls back to others)."""

    #: why the forecast's intervals are a random walk's instead (its ``interval_method``)
    fallback = "series too short for {method}"


class ZeroScale(CalibrationTooShort):
    """A series whose last close is 0: conformal widths, relative to it, would all be 0."""

    fallback = "a last close of 0 leaves {method} no width"


class InvalidTable(ConfigError, ValueError):
    """A long-format input table (``--input``) cannot be used as it is (exit code 2); a
    ValueError too, as statsforecast raises for a bad frame."""


class OutputUnwritable(CryptoMLError):
    """A table run's output, or a part of it, could not be written (a full disk, a folder
    that went away); the chunks already written stay, so the same run again goes on."""


class OutputMismatch(ConfigError):
    """An ``--output`` table already holds (part of) a run of other inputs or settings."""


class JobConflict(ConfigError):
    """A request that the state of a job refuses (HTTP 409): resuming a job that did not fail,
    or one already resumed."""
