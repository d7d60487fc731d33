"""Learning-rate schedules: pure functions lr(step), so a resumed run needs only the step.

    lr = make_schedule("cosine", base_lr=0.1, total_steps=10_000, warmup_steps=500)
    lr(0), lr(500), lr(10_000)      # 0.0002, 0.1, 0.0

Kinds (step counts from 0):
  constant  base_lr
  step      base_lr * gamma ** (step // step_size)   (milestones on the absolute step,
                                                      as in epoch-based step decay)
  cosine    min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2 with t going 0 -> 1 from the
            end of warmup to total_steps; min_lr after total_steps
  cyclic    the cosine, restarted `cycles` times (Loshchilov & Hutter 2017, "SGDR"; the
            schedule of snapshot ensembles, Huang et al. 2017): cycle c covers steps
            [c T / M, (c+1) T / M) (T total steps, M cycles, rounded down), t goes 0 -> 1
            within each, and every cycle ends near min_lr, where a snapshot of the weights
            is a good model of its own. Warmup belongs to the first cycle only.
  onecycle  base_lr + (min_lr - base_lr) * t, t going 0 -> 1 from the end of warmup to
            total_steps: after the warmup's ramp up, a straight line down (the "one cycle" of
            Smith & Topin 2019; the triangle of fast trainers): most steps at a high rate.
Warmup (Goyal et al. 2017, "Accurate, large minibatch SGD"): for step < warmup_steps the
schedule is replaced by the linear ramp base_lr * (step + 1) / (warmup_steps + 1), which
starts near 0 and joins the main schedule at base_lr.  It is what makes the linear
scaling rule (lr proportional to the global batch) survive the first epochs.
Tested by tests/test_core_optim.py.
"""
import math
import numbers

KINDS = ("constant", "step", "cosine", "cyclic", "onecycle")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)   # numpy ints too


def _is_num(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def cycle_bounds(total_steps, cycles):
    """[0, T/M, 2T/M, ..., T] rounded down: where each cycle of a cyclic schedule starts."""
    return [c * total_steps // cycles for c in range(cycles + 1)]


def make_schedule(kind, base_lr, total_steps, warmup_steps=0, step_size=None, gamma=0.1, min_lr=0.0,
                  cycles=1):
    """Validate the arguments once and return lr(step) -> float."""
    if kind not in KINDS:
        raise ValueError(f"schedule: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not (_is_int(total_steps) and total_steps >= 1):
        raise ValueError(f"schedule: total_steps must be an int >= 1, got {total_steps!r}")
    if not (_is_int(warmup_steps) and 0 <= warmup_steps <= total_steps):
        raise ValueError(f"schedule: warmup_steps must be an int in [0, total_steps={total_steps}], "
                         f"got {warmup_steps!r}")
    if kind == "step":
        if not (_is_int(step_size) and step_size >= 1):
            raise ValueError(f"schedule: step_size must be an int >= 1 for kind 'step', got {step_size!r}")
        if not (_is_num(gamma) and 0 < gamma <= 1):
            raise ValueError(f"schedule: gamma must be in (0, 1], got {gamma!r}")
    if kind in ("cosine", "cyclic", "onecycle") and not (_is_num(min_lr) and 0 <= min_lr <= base_lr):
        raise ValueError(f"schedule: min_lr must be in [0, base_lr={base_lr}], got {min_lr!r}")
    if kind == "cyclic":
        if not (_is_int(cycles) and 1 <= cycles <= total_steps):
            raise ValueError(f"schedule: cycles must be an int in [1, total_steps={total_steps}], "
                             f"got {cycles!r}")
        bounds = cycle_bounds(total_steps, cycles)
        if warmup_steps >= bounds[1]:
            raise ValueError(f"schedule: warmup_steps={warmup_steps} must end within the first "
                             f"cycle ({bounds[1]} steps)")

    def cosine(step, start, end):
        t = min(max(step - start, 0) / max(end - start, 1), 1.0)
        return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def main(step):
        if kind == "constant":
            return base_lr
        if kind == "step":
            return base_lr * gamma ** (step // step_size)
        if kind == "cosine":
            return cosine(step, warmup_steps, total_steps)
        if kind == "onecycle":
            t = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
            return base_lr + (min_lr - base_lr) * t
        c = min(step * cycles // total_steps, cycles - 1)      # cyclic: the cycle of `step`
        while bounds[c] > step:                                 # (rounding: at most one off)
            c -= 1
        while c + 1 < cycles and bounds[c + 1] <= step:
            c += 1
        return cosine(step, warmup_steps if c == 0 else bounds[c], bounds[c + 1])

    def lr(step):
        if not _is_int(step) or step < 0:
            raise ValueError(f"schedule: step must be an int >= 0, got {step!r}")
        if step < warmup_steps:
            return float(base_lr * (step + 1) / (warmup_steps + 1))
        return float(main(step))

    return lr
