"""The worker: claims one job at a time, translates its series once, sends it everywhere.

The MR series is written to the job's output folder in the spool before any send, so a send
that fails transiently is retried (exponential backoff with jitter, capped) without translating
again. Destinations are served in parallel and each keeps its own delivery state: one that is
done or failed for good is not contacted again, so a dead archive neither delays nor re-sends
to the others. A peer that rejects the association, a refused series and any other permanent
failure end that destination (and, once nothing transient is left, the job) as ``failed`` with
a reason a person can act on; ``ct2mri-node retry JOB`` makes failed destinations pending again.

Each job is translated by the named model its routing rule chose (``jobs/models.py`` loads it
once and shares it) and sent only to the destinations that rule lists (all when it lists none).
A job without a routing decision (recorded by an older version, or retried after a rule refused
it) is routed here, from its spooled CT, before it is translated.

A job whose series changes after it was claimed ends ``superseded`` (``jobs/store.py``): the
worker checks before each send and starts none for it, and its own state changes (sending, done,
failed, deferred) no longer apply, so it is never queued again; the newer job translates the
changed series.
"""

from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import AnyDestination, NodeConfig
from ..deliver.dispatch import send_series
from ..errors import Ct2MriError, InputError, SendError, SeriesRejected, SpoolError
from ..faults import fault_point
from ..fsutil import fsync_dir
from ..receive.spool import Spool
from ..volume.assemble import VolumeLimits, read_series
from ..deliver.companions import CompanionOptions
from .pipeline import PipelineOptions, run_pipeline, write_series
from ..route.facts import read_facts, scan_series_folder
from ..route.rules import Decision, decide
from .models import ModelPool
from .outputs import output_dir
from .queue import ClaimSource, LocalClaims
from .store import Job, JobStore, Route

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Outcome:
    done: list[str] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)
    permanent: list[str] = field(default_factory=list)
    retry_after_s: list[float] = field(default_factory=list)   # waits peers asked for (Retry-After)
    superseded: list[str] = field(default_factory=list)   # not sent: the job was superseded first


#: What :meth:`Worker._send_one` returns for a destination it did not send to: the job was superseded.
_SUPERSEDED = SendError("not sent: the job was superseded by a newer job of its series", permanent=True)


def backoff_s(
    attempt: int, initial_s: float, factor: float, maximum_s: float,
    jitter: float = 0.0, rng: random.Random | None = None,
) -> float:
    """Delay before attempt ``attempt + 1``: initial, initial*factor, ... times 1 +- ``jitter``,
    capped at maximum (jitter spreads the retries of many jobs after an archive outage)."""
    base = initial_s * factor ** max(0, attempt - 1)
    if jitter > 0:
        base *= (rng or random).uniform(1.0 - jitter, 1.0 + jitter)
    return float(min(maximum_s, base))


def volume_limits(config: NodeConfig) -> VolumeLimits:
    """The volume limits of ``series.*`` (the worker's assembly and the node's screening at
    completion use the same ones)."""
    series = config.series
    return VolumeLimits(min_slices=series.min_slices, max_slices=series.max_slices,
                        max_rows=series.max_matrix, max_columns=series.max_matrix)


class Worker:
    """Runs jobs from the store; one job at a time (one worker per device).

    ``claims`` says where jobs come from: the store itself in one process (the default), or
    leases shared by worker processes (``jobs/queue.py``); a Celery task calls :meth:`process`
    on a job it claimed, the in-process loop calls :meth:`run`. Both run the same code.
    """

    def __init__(
        self,
        config: NodeConfig,
        store: JobStore,
        spool: Spool,
        translator: Any,
        claims: ClaimSource | None = None,
    ) -> None:
        """``translator`` is a :class:`ModelPool` of the named models, or one translator used for
        every job whatever its model (tests, a single model loaded by the caller)."""
        self.config = config
        self.store = store
        self.claims: ClaimSource = claims or LocalClaims(store)
        self.spool = spool
        self.models = translator if isinstance(translator, ModelPool) else ModelPool.single(translator)
        self.pipeline_options = PipelineOptions(
            limits=volume_limits(config),
            companions=CompanionOptions(uncertainty_map=config.outputs.uncertainty_map,
                                        qa_capture=config.outputs.qa_capture),
        )
        self._wake = threading.Event()
        #: Optional operations hook (metrics, provenance, QA preview); see ct2mri_node/ops/observer.py.
        self.observer: Any = None

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Process jobs until ``stop`` is set."""
        while not stop.is_set():
            try:
                job = self.run_once()
            except Ct2MriError as exc:  # e.g. the job database is locked or unreadable
                log.error("worker: %s; trying again shortly", exc)
                job = None
            except Exception:
                log.exception("worker: unexpected error; trying again shortly")
                job = None
            if job is None:
                self._wake.wait(self.config.worker.poll_interval_s)
                self._wake.clear()

    def run_once(self) -> Job | None:
        """Claim and process one due job; returns its final snapshot, or None if none was due."""
        job = self.claims.claim()
        if job is None:
            return None
        with self.claims.holding(job):
            return self.process(job)

    def process(self, job: Job) -> Job:
        """Run one claimed job to done, failed or deferred; returns its final snapshot."""
        log.info("job %d: series %s, attempt %d", job.id, job.series_uid, job.attempts)
        try:
            if job.action != "translate":
                job = self._route(job)
                if job.state != "translating":
                    return job
            if not job.translated or not self._has_output(job):
                if job.translated:   # e.g. the folder was lost to a crash or removed by hand
                    log.warning("job %d: its MR series is missing from the spool; translating again", job.id)
                fault_point("during_translation")
                self._translate(job)
            if not self.store.set_state(job.id, "sending"):
                log.info("job %d superseded while translating: its MR is sent nowhere", job.id)
                return self.store.get(job.id)
            self._deliver(job)
        except Ct2MriError as exc:
            if self.store.is_superseded(job.id):   # e.g. its input changed while it was read
                log.info("job %d superseded (it stopped with: %s)", job.id, exc)
                return self.store.get(job.id)
            log.warning("job %d failed: %s", job.id, exc)
            if self.observer is not None:
                self.observer.job_failed(job, exc)
            reason = f"series refused ({exc.reason}): {exc}" if isinstance(exc, SeriesRejected) else str(exc)
            self.store.fail(job.id, reason)
        except Exception as exc:  # a bug must not stop the worker; record it on the job
            log.exception("job %d: unexpected error", job.id)
            self.store.fail(job.id, f"internal error: {exc!r}; see the node log")
        return self.store.get(job.id)

    # -- translation --------------------------------------------------------------------
    def _translate(self, job: Job) -> None:
        """Spooled CT -> MR series and its companions (uncertainty map, QA image) in the job's
        output folder (written whole, then renamed), so sends and retries treat them alike."""
        start = time.perf_counter()
        datasets = read_series(self.spool.instance_paths(job.series_uid))  # assemble refuses what cannot be decoded
        reading = time.perf_counter() - start
        translator = self.models.get(job.model)
        result = run_pipeline(datasets, translator, self.pipeline_options)
        mr = result.datasets
        timings = dict(result.timings)
        timings["assembly"] = reading + timings["assembly"]   # reading the files + assemble
        # stored before the write, so they are kept when writing fails
        self.store.record_timings(job.id, timings)
        start = time.perf_counter()
        self._write_output(job, result.all_datasets)
        self.store.record_timing(job.id, "write", time.perf_counter() - start)
        fault_point("after_translation")
        self.store.mark_translated(job.id)
        log.info("job %d: %d MR instances and %d companion object(s) written", job.id, len(mr),
                 len(result.companions))
        if self.observer is not None:
            self.observer.job_translated(job, result, output_dir(self.spool, job.id))

    def _write_output(self, job: Job, datasets: list[Any]) -> None:
        final = output_dir(self.spool, job.id)
        staging = final.with_name(f"{final.name}.partial")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            write_series(datasets, staging)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            fsync_dir(final.parent)   # the rename is durable before the job says "translated"
        except OSError as exc:
            raise SpoolError(f"cannot write the MR series of job {job.id} to {final}: {exc}") from exc

    # -- delivery -----------------------------------------------------------------------
    def _deliver(self, job: Job) -> None:
        files = self._output_files(job)
        outcome = self._send_all(job, files)
        if outcome.superseded or self.store.is_superseded(job.id):
            log.info("job %d superseded: delivered to %s before; not sent to %s", job.id,
                     ", ".join(outcome.done) or "no destination", ", ".join(outcome.superseded) or "any other")
            return
        if not outcome.transient and not outcome.permanent:
            if self.store.complete(job.id):
                log.info("job %d done: delivered to %s", job.id, ", ".join(outcome.done) or "no destination")
            return
        reasons = "; ".join(outcome.permanent + outcome.transient)
        settings = self.config.worker
        if not outcome.transient or job.attempts >= settings.max_attempts:
            tail = "" if not outcome.transient else f" (gave up after {job.attempts} attempts)"
            if self.store.fail(job.id, reasons + tail):
                log.warning("job %d failed: %s%s", job.id, reasons, tail)
            return
        delay = backoff_s(job.attempts, settings.backoff_initial_s, settings.backoff_factor,
                          settings.backoff_max_s, settings.backoff_jitter)
        if outcome.retry_after_s:   # a peer said when to come back: never sooner (HTTP 429/503)
            delay = max(delay, max(outcome.retry_after_s))
        if self.store.defer(job.id, delay, reasons):
            log.info("job %d: send will be retried in %.1f s: %s", job.id, delay, reasons)

    def _destinations(self, job: Job) -> list[AnyDestination]:
        """The configured destinations the job's rule sends to (all when it names none); a name
        no longer in the configuration is a permanent failure of that destination."""
        if job.destinations is None:
            return list(self.config.destinations)
        known = {d.name: d for d in self.config.destinations}
        for name in job.destinations:
            if name not in known:
                self.store.record_delivery(job.id, name, "failed",
                                           f"destination {name!r} is no longer configured")
        return [known[n] for n in job.destinations if n in known]

    # -- routing ------------------------------------------------------------------------
    def _route(self, job: Job) -> Job:
        """Route a job that has no decision yet (see the module docstring); returns it as
        stored afterwards: still ``translating`` when a model translates it."""
        if not self.spool.instance_paths(job.series_uid):
            raise InputError(f"series {job.series_uid} has no spooled instances")
        first = scan_series_folder(self.spool.incoming / job.series_uid).first   # as `explain` reads it
        decision = decide(self.config, read_facts(first, calling_ae=None))
        log.info("job %d routed by rule %r: %s", job.id, decision.rule, decision.action)
        self.store.route(job.id, route_of(decision))
        return self.store.get(job.id)

    def _has_output(self, job: Job) -> bool:
        folder = output_dir(self.spool, job.id)
        return folder.is_dir() and any(folder.glob("*.dcm"))

    def _output_files(self, job: Job) -> list[Path]:
        folder = output_dir(self.spool, job.id)
        files = sorted(p for p in folder.glob("*.dcm")) if folder.is_dir() else []
        if not files:
            raise InputError(f"job {job.id} has no MR series in {folder}; run `ct2mri-node retry {job.id}`")
        return files

    def _send_all(self, job: Job, files: list[Path]) -> _Outcome:
        """Send to every destination still pending, in parallel; done and failed ones are skipped."""
        known = {d.destination: d for d in self.store.get(job.id).deliveries}
        outcome = _Outcome()
        pending = []
        for dest in self._destinations(job):
            state = known[dest.name].state if dest.name in known else "pending"
            if state == "done":
                outcome.done.append(dest.name)
            elif state == "failed":   # permanent: not contacted again until `retry`
                outcome.permanent.append(known[dest.name].reason or f"{dest.name} failed")
            else:
                pending.append(dest)
        if not pending:
            return outcome
        with ThreadPoolExecutor(max_workers=len(pending), thread_name_prefix="ct2mri-send") as pool:
            for name, error in pool.map(lambda d: self._send_one(job, d, files), pending):
                if error is _SUPERSEDED:
                    outcome.superseded.append(name)
                elif error is None:
                    outcome.done.append(name)
                else:
                    (outcome.permanent if error.permanent else outcome.transient).append(str(error))
                    if not error.permanent and error.retry_after_s is not None:
                        outcome.retry_after_s.append(error.retry_after_s)
        return outcome

    def _send_one(
        self, job: Job, dest: AnyDestination, files: list[Path]
    ) -> tuple[str, SendError | None]:
        """One destination, one attempt; its outcome is recorded on the job's delivery row.
        Nothing is sent (:data:`_SUPERSEDED` is returned) once the job is superseded."""
        if self.store.is_superseded(job.id):
            log.info("job %d superseded: its MR is not sent to %s", job.id, dest.name)
            return dest.name, _SUPERSEDED
        start, wall_start = time.perf_counter(), time.time()
        try:
            report = send_series(dest, files, self.config.node.ae_title)
        except SendError as exc:
            self.store.record_delivery(job.id, dest.name, "failed" if exc.permanent else "pending", str(exc))
            return dest.name, exc
        except Exception as exc:  # a bug in one destination must not hide the others' results
            log.exception("job %d: unexpected error sending to %s", job.id, dest.name)
            error = SendError(f"internal error sending to {dest.name}: {exc!r}; see the node log")
            self.store.record_delivery(job.id, dest.name, "pending", str(error))
            return dest.name, error
        fault_point("after_send_before_record")
        warned = report.warnings
        notes = [f"{warned} instance(s) answered with a warning status (see the log)"] if warned else []
        notes += [f"skipped {what}: the destination does not accept it" for what in report.skipped]
        self.store.record_delivery(job.id, dest.name, "done", "stored; " + "; ".join(notes) if notes else None)
        timings = {f"send:{dest.name}": time.perf_counter() - start}
        if job.last_instance_at is not None:   # last CT instance -> MR series confirmed here
            timings[f"latency:{dest.name}"] = max(0.0, time.time() - job.last_instance_at)
        if report.seconds_to_first is not None and "first_store_at" not in job.timings:
            timings["first_store_at"] = wall_start + report.seconds_to_first
        self.store.record_timings(job.id, timings)
        fault_point("between_sends")
        return dest.name, None


def route_of(decision: Decision) -> Route:
    """The job store's record of a routing decision."""
    return Route(rule=decision.rule, action=decision.action, model=decision.model,
                 destinations=decision.destinations, reason=decision.reason)
