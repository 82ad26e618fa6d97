"""The one training loop. Methods are `Objective`s plugged into it.

TrainLoop owns batching, microbatching with DDP no_sync, optimisers, precision, EMA, the log and save
cadence, exports and resume. An Objective owns the method: its trained networks ("players"), which player
updates at a given step (`phases`), and the named per-sample loss terms of a phase (`losses`).
Each phase draws its own batch from the data stream, so e.g. a discriminator step sees an independent batch.
"""

import contextlib
import dataclasses
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function

from . import checkpoint, dist_util, logger
from .compile_util import CompileMeter
from .faults import kill_point
from .amp import MixedPrecision
from .ema import EMA


class Objective:
    """Interface of a training method. The loop owns batching, microbatches, optimisers, precision, EMA, logging,
    checkpoints and resume; an objective owns the method: the networks it trains (`players`), which of them a step
    updates (`phases`: generator / discriminator alternation lives here, never in a loss) and the named loss terms.
    Stage 3 is the stage-2 objective with a grown generator, and the baselines are further objectives."""

    players = {}  # name -> nn.Module trained by the loop; frozen networks are plain attributes

    def phases(self, step):
        """The phases of `step`, in order; each updates one player and gets its own batch. A phase is a player
        name, optionally with a sub-name after a colon ("generator:gan") when one player updates twice."""
        raise NotImplementedError

    def losses(self, phase, nets, batch, *, step, generator):
        """Per-sample loss terms of `phase`: a dict of (N,) tensors; "loss" is backpropagated.
        `nets` maps player names to the modules to call (DDP-wrapped when distributed)."""
        raise NotImplementedError

    def ema_rates(self, player):
        return ()

    def export_sidecar(self, player):
        """Architecture sidecar for exporting `player`, or None if it is not exported."""
        return None

    def state_dict(self):
        """Extra state that must survive a resume (e.g. frozen random projections)."""
        return {}

    def load_state_dict(self, state):
        pass


@dataclasses.dataclass
class OptimSpec:
    name: str = "adam"  # adam | adamw | radam
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear learning-rate warm-up, in optimiser steps of this player
    # linear anneal to 0 over this many optimiser steps (0: none); progressive distillation anneals each round
    decay_steps: int = 0
    grad_clip: float = 0.0  # clip the gradient norm to this (0: no clipping)

    def create(self, params):
        classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
        if self.name not in classes:
            raise ValueError(f"unknown optimizer {self.name!r}; choose from {sorted(classes)}")
        return classes[self.name](params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay)

    def lr_at(self, opt_step):
        """The learning rate of optimiser step `opt_step` (0-based): warm-up times the linear anneal; with
        decay_steps = T the first step takes the full rate and step T - 1 takes lr / T."""
        lr = self.lr
        if self.warmup_steps > 0:
            lr *= min(1.0, (opt_step + 1) / self.warmup_steps)
        if self.decay_steps > 0:
            lr *= max(0.0, 1.0 - opt_step / self.decay_steps)
        return lr


# A run stops once a player skips more updates than this for non-finite values (loss, gradients): in a row, or in
# all over the run (across resumes). Healthy fp32/bf16 runs skip none; fp16's loss-scale search is not counted.
MAX_SKIPPED_IN_A_ROW = 3
MAX_SKIPPED_TOTAL = 10


class DivergedError(RuntimeError):
    """A run whose updates keep coming out non-finite."""


class LayoutChangedError(ValueError):
    """A training state whose network tensors do not fit the networks this code builds."""


def _layout_note(module):
    """What changed, in the words of the module (or a submodule) that defines `layout_note`."""
    notes = [m.layout_note for m in module.modules() if isinstance(getattr(type(m), "layout_note", None), str)]
    return notes[0] if notes else "its architecture changed"


class _Player:
    """A trained network with its optimiser, precision policy, EMA and (optional) DDP wrapper."""

    def __init__(self, name, module, spec, ema_rates, precision, device):
        self.name = name
        self.module = module
        self.spec = spec
        self.params = [p for p in module.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"player {name!r} has no trainable parameters")
        self.opt = spec.create(self.params)
        self.mp = MixedPrecision(precision=precision, device=device, grad_clip=spec.grad_clip or None)
        self.ema = EMA(module, rates=ema_rates) if ema_rates else None
        self.opt_steps = 0
        self.skipped_in_a_row = 0  # updates skipped for non-finite values, since the last one that took
        self.skipped_total = 0
        self.net = module
        if dist_util.get_world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DDP(module, device_ids=ids, broadcast_buffers=False)
        self.compiled = None  # torch.compile(net) once compiled: what losses call; net and module stay as they are

    @property
    def callable_net(self):
        return self.net if self.compiled is None else self.compiled

    def state_dict(self):
        return {"model": self.module.state_dict(), "opt": self.opt.state_dict(), "scaler": self.mp.state_dict(),
                "ema": self.ema.state_dict() if self.ema else {}, "opt_steps": self.opt_steps,
                "skipped_in_a_row": self.skipped_in_a_row, "skipped_total": self.skipped_total}

    def load_state_dict(self, state, *, source):
        mismatch = checkpoint.state_dict_mismatch(self.module, state["model"])
        if any(mismatch):
            raise LayoutChangedError(
                f"cannot resume from {source}: its {self.name!r} network does not fit the one this code builds; "
                f"{_layout_note(self.module)}. Start a new --run_dir, or resume with the code and settings that "
                f"wrote the checkpoint {checkpoint.describe_mismatch(*mismatch)}")
        self.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.mp.load_state_dict(state["scaler"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.opt_steps = int(state["opt_steps"])
        # states written before the divergence stop existed have no counts: they start from 0
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        self.skipped_total = int(state.get("skipped_total", 0))


class TrainLoop:
    def __init__(self, *, objective, data, run_dir, global_batch_size, microbatch=0, optim=None,
                 precision="fp32", total_steps, log_interval=100, save_interval=1000, keep_checkpoints=3,
                 seed=0, callbacks=(), config=None, title="training", compile=False):
        """
        data: `data(start_batch) -> iterator` of dict batches of the per-rank size (global_batch_size / world);
              batch k of the stream must be a pure function of k so that resume is exact.
        optim: {player: OptimSpec}; microbatch: per-rank microbatch size (0 = the whole per-rank batch).
        callbacks: objects with `.interval` (steps; 0 = never) and `__call__(loop)`, e.g. preview grids.
        compile: torch.compile the players the losses call, after two timed eager steps (pagoda/compile_util.py).
        """
        world = dist_util.get_world_size()
        if global_batch_size % world:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by the world size {world}")
        self.batch_size = global_batch_size // world
        self.microbatch = microbatch or self.batch_size
        if self.batch_size % self.microbatch:
            raise ValueError(f"per-rank batch {self.batch_size} is not divisible by microbatch {self.microbatch}")
        self.objective, self.data, self.run_dir = objective, data, run_dir
        self.global_batch_size, self.total_steps, self.seed = global_batch_size, total_steps, seed
        self.log_interval, self.save_interval = log_interval, save_interval
        self.callbacks, self.config, self.title = list(callbacks), config or {}, title
        self.compile = compile
        self.device = dist_util.dev()
        optim = optim or {}
        self.players = {name: _Player(name, m, optim.get(name, OptimSpec()), objective.ema_rates(name), precision,
                                      self.device) for name, m in objective.players.items()}
        self.ckpt = checkpoint.CheckpointManager(run_dir, keep=keep_checkpoints)
        self.step = 0
        self.batches_drawn = 0
        self.recorded_config = None  # the settings the resumed state was saved with (None: fresh, or older state)
        self._resume()
        logger.start_at(self.step)
        self._stream = self.data(self.batches_drawn)

    # -- resume / save ---------------------------------------------------------------------------------
    def _resume(self):
        path, state = self.ckpt.latest(log=logger.log)
        if state is None:
            return
        checkpoint.check_state(state, path, players=self.players)
        if int(state["step"]) > self.total_steps:
            raise ValueError(f"{self.run_dir} has already trained {int(state['step'])} steps ({path}) but "
                             f"--total_steps is {self.total_steps}: a run never goes back. Give --total_steps "
                             f"{int(state['step'])} or more, or use a new --run_dir")
        for name, player in self.players.items():
            player.load_state_dict(state["players"][name], source=path)
        self.objective.load_state_dict(state["objective"])
        self.recorded_config = state.get("config")
        self.step, self.batches_drawn = int(state["step"]), int(state["batches_drawn"])
        checkpoint.restore_rng(_own_rng(state))
        logger.log(f"resumed from step {self.step} ({self.ckpt.path(self.step)})")
        if dist_util.is_main():
            self.repair_exports()

    def save(self):
        # Every rank's global generators: their draws (dropout) differ by rank, and must go on so after a resume.
        rngs = dist_util.all_gather_objects(checkpoint.capture_rng())
        if dist_util.is_main():
            state = {"format_version": checkpoint.STATE_FORMAT_VERSION, "step": self.step,
                     "batches_drawn": self.batches_drawn,
                     "players": {n: p.state_dict() for n, p in self.players.items()},
                     "objective": self.objective.state_dict(), "rng": rngs[0], "rng_per_rank": rngs,
                     "config": self.config}
            self.ckpt.save(self.step, state, log=logger.log)
            self.export()
        dist_util.barrier()

    def exports(self):
        """(path, state_dict, sidecar) of every exported player: EMA weights per rate, else raw weights."""
        folder = os.path.join(self.run_dir, "exports")
        for name, player in self.players.items():
            sidecar = self.objective.export_sidecar(name)
            if sidecar is None:
                continue
            sidecar = dict(sidecar, step=self.step)
            if player.ema:
                for rate in player.ema.rates:
                    yield (os.path.join(folder, f"{name}_ema{rate:g}.pt"),
                           player.ema.averaged_state_dict(player.module, rate), dict(sidecar, ema_rate=rate))
            else:
                yield os.path.join(folder, f"{name}.pt"), player.module.state_dict(), sidecar

    def export(self):
        """Plain state_dict + sidecar of every exported player, unless an update was just skipped for non-finite
        values: a run on its way to divergence is not exported (its training state is kept)."""
        streak = {n: p.skipped_in_a_row for n, p in self.players.items() if p.skipped_in_a_row}
        if streak:
            logger.log(f"step {self.step}: not exported, the last updates were skipped for non-finite values "
                       f"({streak})")
            return False
        for path, state_dict, sidecar in self.exports():
            checkpoint.export_network(state_dict, sidecar, path)
        return True

    def stale_exports(self):
        """{path: why} of the exports that do not hold exactly what this state exports (missing, damaged, another
        step, or weights or a sidecar of other content)."""
        stale = {}
        for path, state_dict, sidecar in self.exports():
            why = checkpoint.export_mismatch(path, state_dict, sidecar)
            if why:
                stale[path] = why
        return stale

    def repair_exports(self):
        """Rewrite every export that does not match the resumed state (e.g. its write failed on a full disk, or the
        job was killed between the weights and the sidecar), so the next stage never takes an older network."""
        stale = self.stale_exports()
        if not stale or not self.export():
            return
        lines = "\n".join(f"  {path}: {why}" for path, why in stale.items())
        logger.log(f"exports rewritten from the training state of step {self.step}:\n{lines}")

    def verify_exports(self):
        """Raise unless every export holds exactly the final state's networks (a run is done only then)."""
        streak = {n: p.skipped_in_a_row for n, p in self.players.items() if p.skipped_in_a_row}
        if streak:
            raise DivergedError(f"{self.run_dir} is not done: the last updates before step {self.step} were skipped "
                                f"for non-finite values ({streak}), so its final state was not exported. Lower the "
                                "learning rate, or give a larger --total_steps to see whether it recovers")
        # rank 0 checks; every rank stops on its verdict, so none waits for it in a collective
        stale = dist_util.broadcast_object(self.stale_exports() if dist_util.is_main() else None)
        if stale:
            lines = "\n".join(f"  {path}: {why}" for path, why in stale.items())
            raise RuntimeError(f"{self.run_dir} is not done: its exports do not match the training state of step "
                               f"{self.step}:\n{lines}\nrerun the same command to rewrite them")

    # -- the loop --------------------------------------------------------------------------------------
    def run(self):
        self._banner()
        timer, steps_since_log = time.time(), 0
        bar = logger.progress(total=self.total_steps, desc=self.title, unit="step")
        bar.update(self.step)
        meter = CompileMeter("training step", self._compile_players, device=self.device) if self.compile else None
        while self.step < self.total_steps:
            with meter.unit() if meter else contextlib.nullcontext():
                self.run_step()
            self.step += 1
            kill_point("train.step")
            steps_since_log += 1
            bar.update(1)
            elapsed = time.time() - timer  # training time only: callbacks (previews, metrics) are not counted
            for cb in self.callbacks:  # before the log, so what they log lands in this step's row
                if cb.interval and (self.step % cb.interval == 0 or self.step == self.total_steps):
                    with record_function("callbacks"):
                        cb(self)
            if self.step % self.log_interval == 0 or self.step == self.total_steps:
                logger.logkv("step", self.step)
                logger.logkv("samples", self.step * self.global_batch_size)
                logger.logkv("sec_per_step", elapsed / steps_since_log)
                logger.dumpkvs()
                timer, steps_since_log = time.time(), 0
            if self.step % self.save_interval == 0 or self.step == self.total_steps:
                with record_function("checkpoint"):
                    self.save()
        bar.close()
        if meter:
            meter.report()

    def _compile_players(self):
        for player in self.players.values():
            player.compiled = torch.compile(player.net)

    def run_step(self):
        for phase_index, phase in enumerate(self.objective.phases(self.step)):
            with record_function("data"):
                batch = next(self._stream)
            self.batches_drawn += 1
            self._update(self.players[phase.partition(":")[0]], phase, batch, phase_index)

    def _update(self, player, phase, batch, phase_index):
        nets = {n: p.callable_net for n, p in self.players.items()}
        player.opt.zero_grad(set_to_none=True)
        n = _batch_len(batch)
        chunks = range(0, n, self.microbatch)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        for i, start in enumerate(chunks):
            micro = {k: v[start:start + self.microbatch].to(self.device) for k, v in batch.items()}
            gen = self._generator(phase_index, i)
            last = start + self.microbatch >= n
            sync = player.net.no_sync() if isinstance(player.net, DDP) and not last else contextlib.nullcontext()
            with sync, record_function("forward_backward"):
                with player.mp.autocast():
                    terms = self.objective.losses(phase, nets, micro, step=self.step, generator=gen)
                loss = terms["loss"].float().mean() * (_batch_len(micro) / n)
                finite &= torch.isfinite(loss.detach())
                player.mp.backward(loss)
            with record_function("log"):
                for key, value in terms.items():
                    logger.logkv_mean(f"loss/{phase.replace(':', '_')}/{key}", value)
        for group in player.opt.param_groups:
            group["lr"] = player.spec.lr_at(player.opt_steps)
        with record_function("optimizer"):
            took, grad_norm = player.mp.step(player.opt, player.params)
        logger.logkv_mean(f"grad_norm/{player.name}", grad_norm)
        logger.logkv(f"lr/{player.name}", player.opt.param_groups[0]["lr"])
        if player.mp.scaler:
            logger.logkv(f"lg_loss_scale/{player.name}", player.mp.log_scale)
        if took:
            player.opt_steps += 1
            player.skipped_in_a_row = 0
            if player.ema:
                with record_function("ema"):
                    player.ema.update(player.module)
        else:
            logger.logkv_mean(f"skipped_steps/{player.name}", 1.0)
            logger.log(f"step {self.step}: non-finite gradients for {player.name}; update skipped")
            # fp16's loss scale skips overflowing steps while it searches its scale: only a non-finite loss (on any
            # rank: every rank skips together, and must decide together) counts
            if player.mp.scaler is None or dist_util.all_reduce_sum((~finite).float()).item() > 0:
                self._count_skip(player)

    def _count_skip(self, player):
        """DivergedError once `player` skipped more than MAX_SKIPPED_IN_A_ROW updates in a row or MAX_SKIPPED_TOTAL
        in all for non-finite values; nothing more is saved or exported, the newest training state stays."""
        player.skipped_in_a_row += 1
        player.skipped_total += 1
        if player.skipped_in_a_row <= MAX_SKIPPED_IN_A_ROW and player.skipped_total <= MAX_SKIPPED_TOTAL:
            return
        newest = self.ckpt.states()
        raise DivergedError(
            f"training diverged at step {self.step}: {player.name} skipped {player.skipped_in_a_row} updates in a row "
            f"({player.skipped_total} in all) for non-finite values, more than the {MAX_SKIPPED_IN_A_ROW} in a row or "
            f"{MAX_SKIPPED_TOTAL} in all allowed. Stopped without saving or exporting; "
            + (f"the newest training state {newest[0][1]} is kept. " if newest else "no training state was saved. ")
            + f"Exports written before stay as they were (their sidecar names their step). Lower the learning rate "
              f"(in fp16, or use bf16 or fp32) and use a new --run_dir: a rerun of {self.run_dir} resumes from its "
              "newest state")

    def _generator(self, phase_index, micro_index):
        """Randomness of a (step, phase, microbatch) is a pure function of them: resume is bit-exact."""
        seed = hash((self.seed, dist_util.get_rank(), self.step, phase_index, micro_index)) % (2**63)
        return torch.Generator(self.device).manual_seed(seed)

    def _banner(self):
        counts = {}
        for name, p in self.players.items():
            trainable = sum(x.numel() for x in p.params)
            counts[name] = (trainable, sum(x.numel() for x in p.module.parameters()) - trainable)
        logger.banner(title=self.title, config=self.config, world_size=dist_util.get_world_size(),
                      per_rank_batch=self.batch_size, global_batch=self.global_batch_size, param_counts=counts)


def _own_rng(state):
    """This rank's saved generator states; rank 0's if the state was saved with another world size (or before
    states held every rank's)."""
    per_rank = state.get("rng_per_rank")
    if per_rank and len(per_rank) == dist_util.get_world_size():
        return per_rank[dist_util.get_rank()]
    return state["rng"]


def _batch_len(batch):
    return len(next(iter(batch.values())))
