"""What happened to a run, in one line, from its records alone.

>>> verdict(store.records(run_id), status="finished", config=run["config"]).text   # doctest: +SKIP
'collapsed: K_z → 0 from step 14; K_z = 0 on 154 of 168 steps, the rate in use at the max_lr clamp on 12'

One function, :func:`verdict`, is what the CLI's last line, ``runs list``, the report's
header, the panels' status lines and the study tables all show.  The kinds, checked in
this order (the first that fits wins):

1. **diverged** -- the run's status says so: a NaN or inf at step N (``reason`` names it).
2. **collapsed** -- K_z = 0 (every penultimate activation dead, so L = 0 and lr = 1/L sits at
   the ``max_lr`` clamp) on the last step, or on at least :data:`COLLAPSE_SHARE` of the steps.
3. **blew up** -- the training loss rose :data:`BLOWUP_FACTOR`-fold or more above its start,
   no value was NaN, and the run did not recover (it is not learning at its end).
4. **not learning** -- the final accuracy is within :data:`CHANCE_MARGIN` of chance (1/k,
   k classes), or, without an accuracy, the loss fell by less than :data:`LEARN_MIN_DROP`.
5. **healthy** -- none of the above.

A run with fewer than :data:`MIN_STEPS` steps (it failed or was stopped at once) is **too short**
to judge, and says why.

A run still going, stopped or failed gets the same verdict of its records so far; the
``status`` only adds the words.  :class:`Tally` is the same computation fed batch by batch
(the live panels), so a long run's status line costs O(batch), not O(run).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from lipschitz_lab.runs.edge import EdgeCount

Record = dict[str, Any]

# -- the thresholds, defined once ------------------------------------------------------------
#: collapsed: K_z = 0 on at least this share of the steps (or on the last step)
COLLAPSE_SHARE = 0.5
#: blew up: the loss peaked at least this many times its starting value
BLOWUP_FACTOR = 10.0
#: not learning: final accuracy <= chance + this (chance = 1/k)
CHANCE_MARGIN = 0.05
#: not learning, for a run without accuracy (regression): the loss fell by less than this share
LEARN_MIN_DROP = 0.05
#: "the start" is the mean loss of the first tenth of the steps, at most this many; "the end" the
#: mean of the last tenth (at least one step each)
WINDOW = 10
#: fewer steps than this say nothing yet about learning
MIN_STEPS = 4

KINDS = ("too short", "healthy", "collapsed", "blew up", "not learning", "diverged")

#: what the paper's bound does wrong, added to a failed paper-bound run's verdict (notebook 01)
PAPER_HINT = ("the paper's sup|dE/dz| is too small, so L is underestimated and lr = 1/L too large; "
              "the default bound strict learns")


@dataclass(frozen=True)
class Verdict:
    kind: str            # one of KINDS
    text: str            # one line, starting with the kind
    step: int | None = None   # diverged: the step; collapsed: the first step with K_z = 0

    def __str__(self) -> str:
        return self.text


def _g(x: float) -> str:
    return f"{x:.3g}"


class Tally:
    """The counts a verdict needs, fed in order (``add``); :meth:`verdict` reads them."""

    def __init__(self, records: Iterable[Record] = (), max_lr: float | None = None):
        from lipschitz_lab.config import TrainConfig
        self.max_lr = TrainConfig.max_lr if max_lr is None else max_lr
        self.steps = 0
        self.dead = 0                    # steps with K_z = 0
        self.dead_at_clamp = 0           # ... whose rate in use was max_lr (the clamp)
        self.first_dead: int | None = None
        self.last_dead = False
        self.last_step: int | None = None
        self.n_loss = 0                  # steps with a finite loss
        self.start: list[float] = []     # the first WINDOW losses
        self.recent: list[float] = []    # the last losses (a tenth of the steps, >= WINDOW)
        self.peak = (-math.inf, None)    # (loss, step)
        self.k: int | None = None        # classes, from a LipschitzLR record
        self.acc: float | None = None    # the last epoch's val_acc (else test_acc)
        self.epoch_loss: float | None = None
        self.edge = EdgeCount()          # the measured steps above the edge of stability (runs/edge.py)
        self.add(records)

    def add(self, records: Iterable[Record]) -> "Tally":
        for r in records:
            kind = r.get("kind")
            if kind == "step":
                self._step(r)
            elif kind == "epoch":
                acc = r.get("val_acc") if r.get("val_acc") is not None else r.get("test_acc")
                self.acc = acc if acc is not None else self.acc
                if r.get("train_loss") is not None:
                    self.epoch_loss = float(r["train_loss"])
                    self._peak(self.epoch_loss, r.get("step"))
        return self

    def _peak(self, loss: float, step) -> None:
        if math.isfinite(loss) and loss > self.peak[0]:
            self.peak = (loss, step)

    def _step(self, r: Record) -> None:
        self.steps += 1
        self.last_step = r.get("step")
        self.edge.add_step(r)
        lr = r.get("lr")
        dead = r.get("clamped") == "K_z=0" or r.get("K_z") == 0
        self.last_dead = dead
        if dead:
            self.dead += 1
            self.first_dead = self.last_step if self.first_dead is None else self.first_dead
            self.dead_at_clamp += lr is not None and lr >= self.max_lr * (1 - 1e-9)
        if r.get("k"):
            self.k = int(r["k"])
        loss = r.get("loss")
        if loss is None or not math.isfinite(loss):
            return
        self.n_loss += 1
        if len(self.start) < WINDOW:
            self.start.append(float(loss))
        self.recent.append(float(loss))
        keep = max(WINDOW, self.n_loss // 10)
        if len(self.recent) > 2 * keep:          # the last tenth only grows: keep more than it
            del self.recent[:-keep]
        self._peak(float(loss), self.last_step)

    # -- the verdict --------------------------------------------------------------------------
    def losses(self) -> tuple[float, float] | None:
        """(start, end): the mean of the first and of the last tenth of the step losses."""
        if not self.start:
            return None
        tenth = max(1, self.n_loss // 10)
        start, end = self.start[:min(tenth, WINDOW)], self.recent[-tenth:]
        return sum(start) / len(start), sum(end) / len(end)

    def learning(self, chance: float | None) -> bool | None:
        """Whether the run ends better than chance (None: too early to say)."""
        if self.acc is not None and chance is not None:
            return self.acc > chance + CHANCE_MARGIN
        trend = self.losses()
        if trend is None or self.steps < MIN_STEPS:
            return None
        start, end = trend
        return end < (1 - LEARN_MIN_DROP) * start

    def verdict(self, status: str | None = None, reason: str | None = None, classes: int | None = None,
                config: dict[str, Any] | None = None) -> Verdict:
        out = self._kind(status, reason, classes or self.k)
        if config and config.get("bound") == "paper" and config.get("lr_policy", "lipschitz") == "lipschitz" \
                and out.kind != "healthy":
            out = Verdict(out.kind, f"{out.text} ({PAPER_HINT})", out.step)
        return out

    def _kind(self, status: str | None, reason: str | None, k: int | None) -> Verdict:
        if status == "diverged":
            return _diverged(reason)
        n = self.steps
        if n < MIN_STEPS and not self.dead:     # a run that failed or stopped at once: nothing to judge
            said = f"; {status}: {reason}" if status in ("failed", "stopped") and reason else ""
            return Verdict("too short", f"too short to judge: {n} step{'s' if n != 1 else ''}{said}")
        if self.dead and (self.last_dead or self.dead >= COLLAPSE_SHARE * n):
            at = self.dead_at_clamp
            clamp = f", the rate in use at the max_lr clamp on {at}" if at else ""
            return Verdict("collapsed", f"collapsed: K_z \u2192 0 from step {self.first_dead}; K_z = 0 on "
                                        f"{self.dead} of {n} steps{clamp}", self.first_dead)
        chance = 1 / k if k and k >= 2 else None
        learning = self.learning(chance)
        trend = self.losses()
        peak, at = self.peak
        if trend and trend[0] > 0 and peak >= BLOWUP_FACTOR * trend[0] and learning is not True:
            rose = f"{peak / trend[0]:,.0f}-fold ({_g(trend[0])} \u2192 {_g(peak)} at step {at})"
            return Verdict("blew up", f"blew up: the loss rose {rose}, no value NaN", at)
        if learning is False:
            said = (f"accuracy {self.acc:.3f}, chance {chance:.3f}" if self.acc is not None and chance
                    else f"loss {_g(trend[0])} \u2192 {_g(trend[1])}")
            return Verdict("not learning", f"not learning: {said}")
        return Verdict("healthy", "healthy" + self._notes(trend))

    def _notes(self, trend) -> str:
        notes = [] if trend is None else [f"loss {_g(trend[0])} \u2192 {_g(trend[1])}"]
        if self.acc is not None:
            notes.append(f"accuracy {self.acc:.3f}")
        if self.dead:
            notes.append(f"K_z = 0 on {self.dead} of {self.steps} steps")
        if trend and self.peak[0] >= BLOWUP_FACTOR * trend[0] > 0:
            fold = self.peak[0] / trend[0]
            notes.append(f"a {fold:,.0f}-fold loss spike at step {self.peak[1]}, recovered")
        return ": " + "; ".join(notes) if notes else ""


def _diverged(reason: str | None) -> Verdict:
    where = re.match(r"\s*(step|epoch) (\d+): (.+?)(?: \((.+)\))?$", reason or "")
    if not where:
        return Verdict("diverged", f"diverged ({reason or 'no reason recorded'})")
    detail = where[3] + (f", {where[4]}" if where[4] else "")
    return Verdict("diverged", f"diverged at {where[1]} {where[2]} ({detail})",
                   int(where[2]) if where[1] == "step" else None)


def verdict(records: Iterable[Record], status: str | None = None, reason: str | None = None, *,
            classes: int | None = None, config: dict[str, Any] | None = None) -> Verdict:
    """The run's verdict from its step and epoch records (in order), its status and reason.

    ``classes`` is k (chance = 1/k); by default read from the LipschitzLR records.  ``config``
    (the run's) adds what the paper's bound does wrong to a paper-bound run that failed.
    """
    return Tally(records, (config or {}).get("max_lr")).verdict(status, reason, classes, config)


def run_verdict(store, run_id: str, run: dict[str, Any] | None = None) -> Verdict:
    """:func:`verdict` of a run in the store (its records, status, reason and config)."""
    run = run or store.get_run(run_id)
    return verdict(store.records(run_id), run["status"], run.get("reason"), config=run.get("config"))


def kinds_summary(kinds: list[str]) -> str:
    """Several runs' verdicts in a few words (a study table's cell): ``"healthy"`` when all
    agree, else ``"collapsed 1/2, healthy 1/2"`` (worst first)."""
    counts = {k: kinds.count(k) for k in reversed(KINDS) if k in kinds}
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k} {n}/{len(kinds)}" for k, n in counts.items())
