"""The training loop that every trainer shares: stop when a signal, a budget or
``--stop-after`` says so, take a batch ``(x, y)``, one update, log, validate, checkpoint.

:class:`TrainingLoop` is the base of :class:`~biva.training.trainer.Trainer`: it owns the
order of things and the stop rules; the trainer supplies the batches (``_batches``), the
update (``train_step``), the training record (``_log``), the validation record (``evaluate``)
and the checkpoint (``save``). Reports go to callbacks (:mod:`biva.training.callbacks`); the
best checkpoint is chosen on :attr:`TrainingLoop.selection`.
"""

from __future__ import annotations

import math
import signal
import time

import torch

from biva.objectives import bits_per_dim
from biva.training.callbacks import default_callbacks
from biva.training.distributed import any_rank, average_across_ranks
from biva.training.schedule import free_bits, kl_weight
from biva.training.state import Selection
from biva.training.stopping import StopPolicy, StopSignals, TrainingInterrupted
from biva.training.updates import TrainingStalled
from biva.utils.config_io import to_dict
from biva.utils.rng import capture_rng_state, restore_rng_state


class TrainingLoop:
    """The loop of :meth:`fit` over a trainer's parts (see the module docstring)."""

    #: The validation figure the best checkpoint is chosen on: the ELBO, higher is better.
    selection = Selection("valid_elbo", higher_is_better=True)

    def fit(self) -> dict:
        """Train until ``train.steps``; returns the last logged record.

        Stops early (with a checkpoint) at a budget, ``stop_after``, or a SIGINT/SIGTERM
        (raising :class:`TrainingInterrupted`); raises :class:`TrainingStalled` on a divergence
        and :class:`DiskFull` when the run directory's disk fills up.
        """
        self.callbacks = default_callbacks(self)
        if self.rank == 0:
            # On its own line, flushed, before any bar: a bar's first line ran into it.
            print(f"samples at each validation: {self.run.path / 'figures' / 'samples_latest.png'}",
                  flush=True)
        self.stop_policy = StopPolicy(self.cfg.train, self.clock, self.stop_after)
        self.run.lock()
        try:
            with StopSignals(announce=self.rank == 0) as signals, self.run.disk_full_as_error():
                return self._loop(signals)
        finally:
            for callback in self.callbacks:
                callback.close()
            self.run.unlock()

    def _loop(self, signals: StopSignals) -> dict:
        """The training loop of :meth:`fit`: steps, logs, validations, checkpoints, stops."""
        tc = self.cfg.train
        window: list[dict[str, torch.Tensor]] = []
        t0, images_seen, last = time.perf_counter(), 0, {}
        loop_start, self.session_images = time.perf_counter(), 0
        stream = self._batches()
        self.stop_reason = self.stop_policy.steps_reason()
        while self.step < tc.steps:
            if self._agreed(signals.received is not None):
                self.save()
                raise TrainingInterrupted(signals.received or signal.SIGTERM, self.step,
                                          self.run.path)
            if self._budget_stop():
                # The extra validation must not shift the training RNG stream, or the
                # resumed run would differ from an uninterrupted one.
                rng = capture_rng_state()
                last = {**last, **self._validate()}
                restore_rng_state(*rng)
                self.save()
                break
            epoch, images, labels = next(stream)
            window.append(self.train_step(self._batch(images), labels))
            self.step += 1
            images_seen += images.shape[0] * self.world
            self.session_images += images.shape[0] * self.world
            self.session_seconds = time.perf_counter() - loop_start
            self._notify("on_step")
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                last = self._log(window, epoch, images_seen / max(time.perf_counter() - t0, 1e-9))
                window, t0, images_seen = [], time.perf_counter(), 0
            if self.step % tc.eval_every == 0 or self.step == tc.steps:
                last = {**last, **self._validate()}
            if self.guard.stalled:
                raise TrainingStalled(self.guard.stall_message(self.step, self.run.latest()))
            # A stretch of skipped updates may be a divergence: keep the checkpoints from
            # before it rather than rotate them out for the stalled state.
            if (self.step % tc.checkpoint_every == 0 or self.step == tc.steps) and (
                    not self.guard.in_a_bad_stretch or self.step == tc.steps):
                self.save()
            if self._stop_after_step():
                break
        return last

    def timed_updates(self, n: int) -> tuple[float, float]:
        """Take the next ``n`` updates as :meth:`fit` does, without logs, validations or
        checkpoints; returns the (process CPU, wall) seconds they took: the cost of ``n``
        steps on this machine now (``biva.experiments.ablation.step_costs``)."""
        if getattr(self, "_timing_stream", None) is None:
            self._timing_stream = self._batches()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            _, images, labels = next(self._timing_stream)
            self.train_step(self._batch(images), labels)
            self.step += 1
        return time.process_time() - cpu, time.perf_counter() - wall

    def _agreed(self, flag: bool) -> bool:
        """``flag`` on any rank (one all-reduce under torchrun)."""
        return any_rank(flag, self.device)

    def _budget_stop(self) -> bool:
        """True (every rank alike) when a wall or CPU budget is spent; sets the reason."""
        if not self.stop_policy.has_budget:
            return False
        reason = self.stop_policy.budget_reached()
        if not any_rank(reason is not None, self.device):
            return False
        self.stop_reason = reason or "another rank's budget was reached"
        return True

    def _stop_after_step(self) -> bool:
        """``--stop-after``: as if interrupted, a checkpoint of this step, so --resume
        continues here (every rank decides alike: save() is collective under torchrun)."""
        reason = self.stop_policy.stop_after_reached(self.step)
        if reason is None:
            return False
        if self._saved_step != self.step:
            self.save()
        self.stop_reason = reason
        return True

    def _notify(self, hook: str, *args) -> None:
        for callback in getattr(self, "callbacks", ()):
            getattr(callback, hook)(self, *args)

    def _log(self, window, epoch, images_per_s) -> dict:
        """The training record: means of the window's step statistics (over ranks too)."""
        mean = {k: torch.stack([w[k] for w in window]).mean(0) for k in window[0]}
        mean = average_across_ranks(mean, self.device)  # each rank saw its own slice of the batches
        kl_groups = mean.pop("kl_groups").tolist()
        tc = self.cfg.train
        # n_steps: the steps this record averages (fewer than log_every right after a resume).
        rec = {"kind": "train", "step": self.step, "epoch": epoch, "n_steps": len(window),
               **{k: float(v) for k, v in mean.items()},
               "skipped_total": self.guard.skipped, "images_per_s": images_per_s,
               "amp": self.amp, "skip_threshold": self.guard.threshold(self.step),
               "free_bits": free_bits(tc, self.step - 1),
               "kl_weight": kl_weight(tc, self.step - 1),
               "kl_groups": dict(zip(self.model.group_names, kl_groups, strict=True)),
               "time": time.time(), "cpu_s": self.clock.seconds}
        self._notify("on_train_record", rec)
        return rec

    def _valid_record(self, elbo: float, **figures) -> dict:
        """A ``kind: "valid"`` record at this step: the ELBO (nats) and its bits/dim, the
        trainer's other ``valid_*`` figures, wall and CPU time."""
        dims = math.prod(self.cfg.model.input_shape)
        return {"kind": "valid", "step": self.step, **figures, "valid_elbo": elbo,
                "valid_bpd": float(bits_per_dim(elbo, dims)), "time": time.time(),
                "cpu_s": self.clock.seconds}

    def _validate(self) -> dict:
        """:meth:`evaluate` on rank 0 alone (every rank holds the same EMA weights), then the
        best checkpoint kept by :attr:`selection`."""
        if self.rank != 0:
            return {}
        rec = self.evaluate()
        metric = self.selection.metric
        if self.selection.improves(rec[metric], self.best):
            self.best = rec[metric]
            state = {"step": self.step, "selection": metric, "config": to_dict(self.cfg),
                     **{k: rec[k] for k in ("valid_elbo", "valid_error") if k in rec}}
            self.run.save_best({"model": self.ema.state_dict()}, state)
        rec[f"best_{metric}"] = self.best
        self._notify("on_valid_record", rec)
        return rec
