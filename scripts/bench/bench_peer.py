"""GRPO steps/s: longact_pl's pieces vs TRL's ``GRPOTrainer``, same model, prompts and settings.

Each arm runs in its own subprocess on a copy of the same weights (saved once to a temporary folder):

* ``ours``: the components ``LongActModule`` runs by default: ``HFRollout(prefill_once=True)``
  (``rollout=hf_shared``) + ``LogprobPass.for_model(policy, shared_prefix=True, pack_completions="auto")``
  (policy and reference, ``module.logprobs.shared_prefix=true``, ``module.logprobs.pack_completions=auto``)
  + ``GRPO`` loss, in a plain loop shaped like ``LongActModule.training_step`` (the whole step in one bf16
  autocast region, as Lightning's ``bf16-mixed`` does), AdamW, global-norm clipping;
* ``ours_naive``: the same loop with ``HFRollout`` + ``LogprobPass.for_model(policy, shared_prefix=False)``
  (``rollout=hf module.logprobs.shared_prefix=false``);
* ``trl``: ``trl.GRPOTrainer`` (``pip install --no-deps trl==1.16.0`` + ``datasets`` and its missing
  dependencies, e.g. ``pip install --no-deps datasets==5.2.0 pandas==3.1.1 pyarrow==26.0.1 multiprocess``).

Matched settings (both sides): B prompts x G completions per optimizer step (TRL: per_device_train_batch_size
= G, gradient_accumulation_steps = B, so one generation per step and one group per micro-batch, like ours);
HF ``generate`` sampling at temperature 0.7, top_p 1, top_k 0, ``max_new_tokens`` = C, the model's EOS;
KL coef (TRL ``beta``) 0.04 with a frozen reference model; clip eps 0.2/0.2; group-std-scaled advantages
(``scale_rewards="group"``); loss aggregation seq-mean-token-mean (TRL ``loss_type="grpo"``); one pass per
batch (``num_iterations=1``, on-policy ratio: neither side runs an "old log-prob" pass, the ratio's old
log-probs are the training pass's own, detached -- TRL skips that pass when ``num_iterations=1`` and one
generation feeds one optimizer step, ours when ``ppo_epochs=1`` and one mini-batch, ``Learner.prepare``; the
"ref/old logprob passes" phase is the reference pass on both sides); AdamW lr 1e-6, betas (0.9, 0.999),
weight decay 0, constant lr, no warm-up, the same fused AdamW kernel (TRL: ``adamw_torch_fused``, the Hugging
Face default; ours: ``module.optimizer``'s default, fused wherever torch has it; ``--ours-kernel foreach``
runs ``module.optimizer.fused=false foreach=true``, the CPU default before, bit-identical to torch's
per-tensor loop); max grad norm 1.0;
fp32 weights with bf16 autocast (TRL ``bf16=True``); gradient checkpointing off (``--ckpt`` turns it on for
both); dropout off; the reward is RULER ``string_match_all`` on the same needle-in-a-haystack prompts
(chat-templated identically), fed in the same order, no shuffling. The LM head
scores completion positions only on both sides: TRL's fused head does so where Triton runs (GPUs) but scores
every prompt position too on CPU, ~(P + C) / C times the head work; the bench gives TRL its GPU path
(``--trl-score-all`` keeps its CPU path: that setting alone made the quick figure 14.5x).
Per-step time = median over steps after the first (the first is warm-up for both). Each arm also prints its
median seconds per phase (generation, reference / old log-prob passes, training forward, backward, gradient
clip, optimizer step; the rest is "other") and its peak RSS increase during training.

    python scripts/bench/bench_peer.py            # SmolLM2, P~1024, B=2, G=4, C=32, 4 steps
    python scripts/bench/bench_peer.py --quick    # small random Llama, P~512, B=2, G=4, C=16, 3 steps

Prints ``peer_grpo_steps_per_s ratio=<a/b> a=<steps/s ours> b=<steps/s TRL>`` (and the same for
``ours_naive`` vs TRL), then a second setting at long context, where prompt sharing pays: the small random
Llama at P=2048, G=8, C=64, one prompt a step, 2 threads (``ours`` vs TRL; ``--no-long`` skips it). Each
setting's ``# training pass`` line gives the training forward and backward seconds of both, their ratio and
the token-count limit ``G(P+C)/(P+GC)`` of that ratio (the shared, packed pass runs ``P + G*C`` tokens per
group, TRL ``G*(P+C)``), and both optimizer steps. ``peer_optimizer_steps_per_s_{default,foreach}`` time the
optimizer step alone, ours against TRL's kernel, interleaved in one process (``--optimizer-only``: only
those).

Without TRL installed the ``trl`` arm fails (its error is printed) and no ratio is printed. To install it
without touching the project's environment: ``pip install --no-deps --target /tmp/peer trl==1.16.0
datasets==5.2.0 pandas==3.1.1 pyarrow==26.0.1 multiprocess`` and run with ``PYTHONPATH=/tmp/peer``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from _common import BF16_MIXED, PeakRSS, figure, load, precision_line, set_threads

from longact_pl.data.prompting import template_ids, to_messages
from longact_pl.data.sources import GeneratedSource
from longact_pl.data.tasks.niah import NeedleInAHaystack
from longact_pl.rewards.string_match import StringMatchAll

TEMPERATURE, TOP_P, TOP_K, BETA, EPS, LR, CLIP = 0.7, 1.0, 0, 0.04, 0.2, 1e-6, 1.0


def samples(tokenizer, count: int, length: int) -> list:
    """``count`` needle-in-a-haystack samples of about ``length`` tokens (4 keys, ask one)."""
    source = GeneratedSource(NeedleInAHaystack(num_keys=4), count, [length], seed=7, tokenizer=tokenizer)
    return [source[i] for i in range(count)]


def run_ours(args, folder: str, data: list, shared: bool) -> tuple[list[float], dict[str, float], float]:
    """Per-step seconds of the plain longact_pl GRPO loop, median seconds per phase, peak RSS (MB)."""
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longact_pl.algos.algorithm import GroupPolicyGradient
    from longact_pl.models.types import finish
    from longact_pl.ops.policy_logprobs import LogprobCall, LogprobPass
    from longact_pl.optim import build_optimizer
    from longact_pl.rewards.scoring import score
    from longact_pl.rollout.hf import HFRollout

    tok = AutoTokenizer.from_pretrained(folder)
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    policy = finish(policy, tok, args.ckpt).model
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    # module.optimizer (conf/module/default.yaml) with this bench's settings; kernel: see --ours-kernel
    kernel = {"auto": {"fused": None, "foreach": None}, "foreach": {"fused": False, "foreach": True}}
    factory = functools.partial(torch.optim.AdamW, lr=LR, betas=(0.9, 0.999), weight_decay=0.0)
    opt = build_optimizer(functools.partial(factory, **kernel[args.ours_kernel]), policy.parameters())
    engine = HFRollout(
        group_size=args.group,
        max_new_tokens=args.new,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        top_k=TOP_K,
        prefill_once=shared,
    )
    algo = GroupPolicyGradient(eps_low=EPS, eps_high=EPS, kl_coef=BETA, aggregation="seq_mean_token_mean")
    reward, group = StringMatchAll(), args.group

    logprob_pass = LogprobPass.for_model(
        policy, shared, 1024, "auto" if shared else False
    )  # module's defaults

    def logprobs(model, ids, am, width, entropy=False):
        return logprob_pass(model, LogprobCall(ids, am, width, TEMPERATURE, entropy))

    times, phases = [], Phases()
    with PeakRSS() as rss:
        for step in range(args.steps):
            batch = data[step * args.prompts : (step + 1) * args.prompts]
            start = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16):
                with phases("generation"):
                    ro = engine.generate(
                        policy, tok, [template_ids(tok, to_messages(s.prompt)) for s in batch], seed=step
                    )
                metas = [{"references": s.references, "task": s.task} for s in batch]
                advantages = algo.advantages(score(reward, ro.completions, metas, group), group)  # [N]
                width = ro.completion_mask.shape[1]
                mask = ro.completion_mask.float()  # [N, C]
                rows = torch.arange(mask.shape[0]).split(group)
                with torch.no_grad(), phases("ref/old logprob passes"):
                    ref_logp = torch.cat(
                        [logprobs(ref, ro.input_ids[r], ro.attention_mask[r], width)[0] for r in rows]
                    )
                for r in rows:
                    with phases("train forward"):
                        logp, _ = logprobs(
                            policy, ro.input_ids[r], ro.attention_mask[r], width, entropy=True
                        )  # [G, C]
                        loss, _ = algo.loss(
                            logp, logp.detach(), ref_logp[r], advantages[r], mask[r],
                            num_seqs=mask.shape[0], num_tokens=mask.sum(),
                        )  # fmt: skip
                    with phases("train backward"):
                        loss.backward()
            with phases("grad clip"):
                torch.nn.utils.clip_grad_norm_(policy.parameters(), CLIP)
            with phases("optimizer step"):
                opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            phases.end_step()
    return times, phases.per_step(), rss.peak_mb


def run_trl(args, folder: str, data: list) -> tuple[list[float], dict[str, float], float]:
    """Per-step seconds of ``trl.GRPOTrainer`` (successive ``on_step_end``), phases and peak RSS (MB).

    Phases come from wrapping the trainer's methods: ``_generate`` (generation), no-grad
    ``_get_per_token_logps_and_entropies`` calls (reference / old log-probs), ``compute_loss`` (training
    forward), ``accelerator.backward`` and the optimizer-step callbacks.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    with contextlib.suppress(ImportError):  # the cache fingerprint (unused here) fails to pickle some pyarrow
        import datasets.arrow_dataset  # types (datasets 5.2 with pyarrow 26: MonthDayNano); a fixed one does

        datasets.arrow_dataset.generate_fingerprint = lambda dataset: "bench_peer"
    ds = Dataset.from_list([{"prompt": to_messages(s.prompt), "references": s.references} for s in data])
    match = StringMatchAll()

    def reward(prompts, completions, references, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return match(texts, references)

    if not args.trl_score_all:
        # TRL's fused LM head scores only completion positions where Triton runs (GPUs), but every prompt
        # position elsewhere (CPU): here ~(P + C) / C times the head work. Score as on GPUs.
        import trl.trainer.utils as trl_utils

        trl_utils._use_triton = lambda device: True  # the kernel module's own check still picks torch tiles

    stamps: list[float] = []
    phases = Phases()

    class StepTimer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_pre_optimizer_step(self, *a, **k):
            phases.start("optimizer step")

        def on_optimizer_step(self, *a, **k):
            phases.stop("optimizer step")

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())
            phases.end_step()

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=True, gradient_checkpointing=args.ckpt,
            per_device_train_batch_size=args.group, gradient_accumulation_steps=args.prompts,
            num_generations=args.group, max_completion_length=args.new, max_steps=args.steps,
            temperature=TEMPERATURE, top_p=TOP_P, top_k=TOP_K, beta=BETA, epsilon=EPS, num_iterations=1,
            loss_type="grpo", scale_rewards="group", learning_rate=LR, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=CLIP, shuffle_dataset=False, disable_dropout=True,
            model_init_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"},
            logging_steps=1, report_to="none", save_strategy="no", dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=folder, reward_funcs=reward, args=cfg, train_dataset=ds, processing_class=tok,
            callbacks=[StepTimer()],
        )  # fmt: skip
        timed(trainer, "_generate", phases, "generation")
        timed(trainer, "_clip_grad_norm", phases, "grad clip")  # before on_pre_optimizer_step
        timed(trainer, "compute_loss", phases, "train forward")
        timed(trainer.accelerator, "backward", phases, "train backward")
        logps = trainer._get_per_token_logps_and_entropies

        def no_grad_passes(*a, **k):  # the grad-enabled call is the training forward (in compute_loss)
            if torch.is_grad_enabled():
                return logps(*a, **k)
            with phases("ref/old logprob passes"):
                return logps(*a, **k)

        trainer._get_per_token_logps_and_entropies = no_grad_passes
        with PeakRSS() as rss:
            trainer.train()
    return [b - a for a, b in zip(stamps, stamps[1:])], phases.per_step(), rss.peak_mb


class Phases:
    """Seconds per named phase, summed within a step, kept per step."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self._open: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str) -> None:
        self._open[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.current[name] = self.current.get(name, 0.0) + time.perf_counter() - self._open.pop(name)

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = {}

    def per_step(self) -> dict[str, float]:
        """Median seconds per step of each phase, over the steps after the first (warm-up)."""
        steps = self.steps[1:] or self.steps
        names = {k for step in steps for k in step}
        return {k: statistics.median(step.get(k, 0.0) for step in steps) for k in sorted(names)}


def timed(obj, method: str, phases: Phases, name: str) -> None:
    """Wrap ``obj.method`` so its calls count towards ``phases[name]``."""
    original = getattr(obj, method)

    def wrapper(*a, **k):
        with phases(name):
            return original(*a, **k)

    setattr(obj, method, wrapper)


def optimizer_step_lines(args, tag: str) -> list[str]:
    """Optimizer step alone, side by side in one process (interleaved, so load hits every arm alike).

    On the setting's model with fixed random gradients: our AdamW as ``module.optimizer`` builds it by
    default (fused, CPU included) and with ``fused=false foreach=true`` (the CPU default before, bit-identical
    to torch's per-tensor loop), against TRL's (the Hugging Face Trainer's ``adamw_torch_fused``:
    ``torch.optim.AdamW(fused=True)``), and torch's per-tensor loop. Figures: steps/s ours / TRL.
    """
    from _common import interleaved_times

    from longact_pl.optim import build_optimizer

    params = [p for p in load(args.model).model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
    adamw = functools.partial(torch.optim.AdamW, lr=LR, betas=(0.9, 0.999), weight_decay=0.0)
    opts = {
        "ours_default": build_optimizer(functools.partial(adamw, fused=None, foreach=None), params),
        "ours_foreach": build_optimizer(functools.partial(adamw, fused=False, foreach=True), params),
        "trl": torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=0.0, fused=True),
        "torch_loop": torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=0.0, foreach=False),
    }

    def step(opt):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    times = interleaved_times({k: functools.partial(step, o) for k, o in opts.items()}, reps=9)
    print(
        f"# optimizer step alone ({sum(p.numel() for p in params) / 1e6:.1f}M params, interleaved, median "
        "s): " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()),
        flush=True,
    )
    return [
        figure(f"peer_optimizer_steps_per_s_default[{tag}]", times["trl"] / times["ours_default"],
               1 / times["ours_default"], 1 / times["trl"]),
        figure(f"peer_optimizer_steps_per_s_foreach[{tag}]", times["trl"] / times["ours_foreach"],
               1 / times["ours_foreach"], 1 / times["trl"]),
    ]  # fmt: skip


# The long-context setting of the second line: where prompt sharing pays (issue 23's figures)
LONG = {"model": "small_llama", "prompt": 2048, "prompts": 1, "group": 8, "new": 64}


def compare(args, setting: dict, arms: list[str]) -> dict[str, tuple[float, dict[str, float]]]:
    """Run each arm in its own subprocess on a copy of the same weights.

    Returns:
        ``{arm: (median seconds per step, median seconds per phase)}`` of the arms that finished.
    """
    forward = ["--model", setting["model"], "--prompt", str(setting["prompt"]), "--new", str(setting["new"])]
    forward += ["--steps", str(setting["steps"]), "--prompts", str(setting["prompts"])]
    forward += ["--group", str(setting["group"]), "--threads", str(setting["threads"])]
    forward += ["--ours-kernel", args.ours_kernel] + (["--ckpt"] if args.ckpt else [])
    forward += ["--trl-score-all"] if args.trl_score_all else []
    results: dict[str, tuple[float, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        loaded = load(setting["model"])
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        for arm in arms:
            out = subprocess.run(
                [sys.executable, __file__, *forward, "--arm", arm, "--folder", folder],
                capture_output=True, text=True,
            )  # fmt: skip
            if out.returncode != 0:
                print(f"# arm {arm} failed:\n{out.stderr[-3000:]}", flush=True)
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            times = res["times"]
            step = statistics.median(times[1:] if len(times) > 1 else times)
            results[arm] = (step, res["phases"])
            parts = ", ".join(f"{k} {v:.2f}" for k, v in res["phases"].items())
            other = step - sum(res["phases"].values())
            print(f"# {arm}: step seconds {[round(t, 2) for t in times]}", flush=True)
            print(
                f"# {arm}: median s/step by phase: {parts}, other {other:.2f}; "
                f"peak RSS increase during training {res['peak_mb']:.0f} MB",
                flush=True,
            )
    print(
        f"# model={setting['model']} P~{setting['prompt']} B={setting['prompts']} G={setting['group']} "
        f"C={setting['new']} steps={setting['steps']} threads={setting['threads'] or 'default'} "
        f"ckpt={args.ckpt} "
        f"bf16_autocast=True beta={BETA} T={TEMPERATURE} "
        f"trl_lm_head={'all positions (its CPU path)' if args.trl_score_all else 'completions (GPU path)'} "
        f"optimizer=AdamW ours {'fused (default)' if args.ours_kernel == 'auto' else 'foreach'}, "
        "TRL fused (adamw_torch_fused)",
        flush=True,
    )
    precision_line(dict.fromkeys(arms, BF16_MIXED))  # TRL: bf16=True, fp32 weights
    return results


def training_pass_line(results: dict, setting: dict) -> str:
    """``# training pass``: forward and backward seconds, ours vs TRL, against the token-count limit.

    Per group the shared, packed pass runs ``P + G*C`` tokens where TRL runs ``G*(P + C)``: a training
    pass at most ``G(P+C)/(P+GC)`` times faster (attention, quadratic in P, aside).
    """
    (_, ours), (_, trl) = results["ours"], results["trl"]
    p, g, c = setting["prompt"], setting["group"], setting["new"]
    limit = g * (p + c) / (p + g * c)
    mine = ours.get("train forward", 0.0) + ours.get("train backward", 0.0)
    theirs = trl.get("train forward", 0.0) + trl.get("train backward", 0.0)
    ratio = theirs / mine if mine else float("nan")
    line = (
        f"# training pass: forward ours {ours.get('train forward', 0):.2f} s vs TRL "
        f"{trl.get('train forward', 0):.2f} s, backward ours {ours.get('train backward', 0):.2f} s vs TRL "
        f"{trl.get('train backward', 0):.2f} s: {ratio:.2f}x TRL; token-count limit G(P+C)/(P+GC) = "
        f"{limit:.2f}x ({ratio / limit:.0%} of it); optimizer step ours "
        f"{ours.get('optimizer step', 0):.3f} s vs TRL {trl.get('optimizer step', 0):.3f} s"
    )
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small random model, small sizes")
    p.add_argument("--model", default=None, help="smollm2 | small_llama | tiny_llama | tiny_qwen3")
    p.add_argument("--prompt", type=int, default=None, help="target prompt tokens")
    p.add_argument("--prompts", type=int, default=2, help="B prompts per step")
    p.add_argument("--group", type=int, default=4, help="G")
    p.add_argument("--new", type=int, default=None, help="max new tokens (C)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--ckpt", action="store_true", help="gradient checkpointing on both sides")
    p.add_argument("--arms", default="ours,ours_naive,trl")
    p.add_argument(
        "--trl-score-all",
        action="store_true",
        help="keep TRL's CPU behaviour: its LM head over every prompt position (on GPUs: completions only)",
    )
    p.add_argument(
        "--ours-kernel",
        choices=("auto", "foreach"),
        default="auto",
        help="our AdamW kernel: auto = module.optimizer's default, fused (TRL's kernel: matched settings); "
        "foreach = module.optimizer.fused=false foreach=true (the CPU default before fused; slower)",
    )
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--long-threads", type=int, default=2, help="torch threads of the long-context line")
    p.add_argument("--no-long", action="store_true", help="skip the long-context line (P=2048, G=8, C=64)")
    p.add_argument("--optimizer-only", action="store_true", help="only the interleaved optimizer-step lines")
    p.add_argument("--long-only", action="store_true", help="only the long-context line")
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    set_threads(args.threads)
    args.model = args.model or ("small_llama" if args.quick else "smollm2")
    args.prompt = args.prompt or (512 if args.quick else 1024)
    args.new = args.new or (16 if args.quick else 32)
    args.steps = args.steps or (3 if args.quick else 4)
    if args.arm:
        from transformers import AutoTokenizer

        data = samples(AutoTokenizer.from_pretrained(args.folder), args.steps * args.prompts, args.prompt)
        torch.manual_seed(0)
        times, phases, peak_mb = (
            run_trl(args, args.folder, data)
            if args.arm == "trl"
            else run_ours(args, args.folder, data, shared=args.arm == "ours")
        )
        print(json.dumps({"times": times, "phases": phases, "peak_mb": peak_mb}), flush=True)
        return []
    if args.optimizer_only:
        return optimizer_step_lines(args, "quick" if args.quick else args.model)
    setting = {"model": args.model, "prompt": args.prompt, "prompts": args.prompts, "group": args.group,
               "new": args.new, "steps": args.steps, "threads": args.threads}  # fmt: skip
    results = {} if args.long_only else compare(args, setting, args.arms.split(","))
    lines = []
    tag = "quick" if args.quick else f"{args.model}_P{args.prompt}_G{args.group}_C{args.new}"
    if "trl" in results:
        for arm in ("ours", "ours_naive"):
            if arm in results:
                a, b = 1 / results[arm][0], 1 / results["trl"][0]
                name = "peer_grpo_steps_per_s" + ("" if arm == "ours" else "_naive_path")
                lines.append(figure(f"{name}[{tag}]", a / b, a, b))
        if "ours" in results:
            training_pass_line(results, setting)
    lines += [] if args.long_only else optimizer_step_lines(args, tag)
    if not args.no_long:
        long = {**LONG, "steps": 3, "threads": args.long_threads}
        results = compare(args, long, ["ours", "trl"])
        if {"ours", "trl"} <= set(results):
            a, b = 1 / results["ours"][0], 1 / results["trl"][0]
            tag = f"{long['model']}_P{long['prompt']}_G{long['group']}_C{long['new']}_B{long['prompts']}"
            lines.append(figure(f"peer_grpo_steps_per_s[{tag}]", a / b, a, b))
            training_pass_line(results, long)
    if not lines:
        print(
            "# no ratio: the trl arm did not run (pip install --no-deps trl==1.16.0 ...: see the docstring)"
        )
    return lines


if __name__ == "__main__":
    main()
