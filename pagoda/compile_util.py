"""torch.compile for long runs (--compile of train.py, sample.py and encode.py).

Compiling costs minutes up front and saves a fraction of every later step, so it pays only on long runs. To say
after how many units (training steps, network calls) it pays, the first units run eager and are timed, then the
network is compiled; the compiling unit and a few compiled units after it are timed, and the compile time, the
speed-up and the break-even are logged once. Compiling never replaces the modules a run saves: state dicts, exports
and resumes see the same modules, keys and weights as without it.
"""

import contextlib
import statistics
import time

import torch

from . import logger


class CompileMeter:
    """Times units (`with meter.unit(): ...`): `eager_units` eager ones, then calls `compile_now()`; then the
    compiling unit and `compiled_units` compiled ones, and logs the compile time and break-even once."""

    def __init__(self, what, compile_now, *, device, unit="step", eager_units=2, compiled_units=3, log=logger.log):
        self.what, self.unit_name, self.log = what, unit, log
        self._compile_now = compile_now
        self._cuda = torch.device(device).type == "cuda"
        self.eager_units, self.compiled_units = eager_units, compiled_units
        self.eager, self.compiled, self.compiling = [], [], None
        self.done = False

    @contextlib.contextmanager
    def unit(self):
        if self.done:
            yield
            return
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self._record(time.perf_counter() - start)

    def _sync(self):
        if self._cuda:
            torch.cuda.synchronize()

    def _record(self, seconds):
        if len(self.eager) < self.eager_units:
            self.eager.append(seconds)
            if len(self.eager) == self.eager_units:
                self._compile_now()
        elif self.compiling is None:
            self.compiling = seconds
        else:
            self.compiled.append(seconds)
            if len(self.compiled) == self.compiled_units:
                self.report()

    def report(self):
        """Log what the timed units say (called by itself once enough are timed; call it at the end of a run)."""
        if self.done or not self.eager:
            return
        self.done = True
        if self.compiling is None or not self.compiled:
            self.log(f"compile ({self.what}): the run ended before a compiled {self.unit_name} was timed")
            return
        # the first eager unit also pays one-time set-up (allocations, kernel selection) that compiling does not
        eager = min(self.eager[1:] or self.eager)
        compiled = statistics.median(self.compiled)
        compile_seconds = max(self.compiling - compiled, 0.0)
        saved = eager - compiled
        pays = (f"it pays for itself after {compile_seconds / saved:,.0f} {self.unit_name}s" if saved > 0
                else "it never pays for itself here")
        self.log(f"compile ({self.what}): compiling took {compile_seconds:.1f} s; {1e3 * eager:.1f} ms per "
                 f"{self.unit_name} eager, {1e3 * compiled:.1f} ms compiled ({eager / compiled:.2f}x); {pays}")


def compile_forward(module, what, *, device, **meter_kwargs):
    """Compile `module`'s forward after eager warm-up calls, timing calls (see CompileMeter). The module object, its
    parameters and its state-dict keys stay as they are (the compiled function is the module's own forward, so no
    `_orig_mod.` wrapper appears). Returns the meter; call its report() when the work is done."""
    eager_forward = module.forward
    current = {"forward": eager_forward}

    def compile_now():
        current["forward"] = torch.compile(eager_forward)

    meter = CompileMeter(what, compile_now, device=device, unit="call", **meter_kwargs)

    def forward(*args, **kwargs):
        with meter.unit():
            return current["forward"](*args, **kwargs)

    module.forward = forward
    return meter
