"""The `encoder-shrink` command line: each subcommand parses its arguments, then calls one library function."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import sys
import traceback
from pathlib import Path

from encoder_shrink import __version__
from encoder_shrink.errors import EncoderShrinkError, InvalidArgumentError


def _without_torchvision_notice(record: logging.LogRecord) -> bool:
    """False for transformers' notice that an image processor falls back to its PIL version without torchvision."""
    return "requires torchvision" not in record.getMessage()


def _quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # One progress bar per job; the libraries' per-load and per-step bars would bury it.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # Loading a pipeline imports its image processors (safety checker, IP-adapter inputs) that no command of ours uses;
    # without torchvision (not a dependency) transformers falls back to their PIL versions and says so on stderr.
    notices = logging.getLogger("transformers.utils.import_utils")
    if _without_torchvision_notice not in notices.filters:
        notices.addFilter(_without_torchvision_notice)


def _demo(args: argparse.Namespace) -> int:
    _quiet_libraries()
    if args.tiue and args.drop_in:
        raise InvalidArgumentError("--tiue and --drop-in are two different demos; pass one of them.")
    if args.tiue and args.steps is not None:
        raise InvalidArgumentError("--steps sets the text-encoder demo's distillation; `demo --tiue` loads the "
                                   "shipped students (python -m encoder_shrink.toy.tiue_students re-makes them).")
    if args.tiue:
        from encoder_shrink.toy.tiue_demo import results_table, run_tiue_demo

        sizes = {k: v for k, v in (("eval_prompts", args.eval_prompts), ("seeds", args.seeds)) if v is not None}
        output = args.output or "encoder-shrink-tiue-demo"
        results = run_tiue_demo(output, teacher=args.teacher, students=args.students, seed=args.seed, **sizes)
        print(results_table(results))
        for target, ok in results["targets"].items():
            print(f"- {target}: {'met' if ok else 'NOT met'}")
        print(f"\nWrote {output}/results.json, report.md and grid.png in {results['seconds']:.0f} s")
        return 0
    args.output = args.output or "encoder-shrink-demo"
    for flag in ("students", "eval_prompts", "seeds"):
        if getattr(args, flag) is not None:
            raise InvalidArgumentError(f"--{flag.replace('_', '-')} is an option of `demo --tiue`; add --tiue.")
    if not args.drop_in:
        from encoder_shrink.toy.demo import results_table, run_toy_demo

        results = run_toy_demo(args.output, teacher=args.teacher, steps=args.steps, seed=args.seed)
        print(results_table(results))
        for target, ok in results["targets"].items():
            print(f"- {target}: {'met' if ok else 'NOT met'}")
        print(f"\nWrote {args.output}/results.json, report.md and grid.png in {results['timings_s']['total']:.0f} s")
        return 0
    from encoder_shrink.demo import results_table, run_drop_in_demo

    families = tuple(args.families or _families())
    results = run_drop_in_demo(args.output, families=families, seed=args.seed)
    print(results_table(results))
    print(f"\nWrote {args.output}/results.json, report.md and grid.png")
    return 0 if all(r["reload_identical"] and r["images_finite"] for r in results["families"].values()) else 1


def _convert(args: argparse.Namespace) -> int:
    from encoder_shrink.convert import convert_reference_checkpoint

    student = convert_reference_checkpoint(args.source, args.output, overwrite=args.overwrite)
    config = student.config
    print(
        f"Wrote {args.output}: T5 d_model={config.d_model}, {config.num_layers} layers -> "
        f"teacher_dim={config.teacher_dim}"
    )
    return 0


def _parse_prompts(values: list[str] | None):
    """`--prompts PATH` (replaces the recipe's sources) or `--prompts KIND=PATH ...` (per source kind)."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    mapping = {}
    for value in values:
        kind, sep, path = value.partition("=")
        if not sep:
            raise InvalidArgumentError(
                f"--prompts {value!r}: with several files, name each source: KIND=PATH (e.g. laion=captions.parquet)."
            )
        mapping[kind] = path
    return mapping


def _inspect(args: argparse.Namespace) -> int:
    import torch

    from encoder_shrink.files import atomic_write_text
    from encoder_shrink.inspection import format_inspection, inspect_pipeline
    from encoder_shrink.loading import load_pipeline

    pipe = load_pipeline(args.pipeline, dtype=getattr(torch, args.dtype))
    call_kwargs = {"height": args.resolution, "width": args.resolution} if args.resolution else None
    result = inspect_pipeline(pipe, slot=args.slot, trace=args.trace, call_kwargs=call_kwargs)
    print(format_inspection(result))
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        atomic_write_text(Path(args.output), text)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from encoder_shrink.files import atomic_write_text
    from encoder_shrink.training.plan import plan, plan_chart

    result = plan(args.pipeline, args.recipe, gpus=args.gpus, gpu_memory=args.gpu_memory, gpu=args.gpu,
                  utilisation=args.utilisation, slot=args.slot)
    print(result.table())
    if args.output:
        folder = Path(args.output)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "plan.json", json.dumps(result.to_dict(), indent=2) + "\n")
        atomic_write_text(folder / "plan.md", "```\n" + result.table() + "\n```\n")
        plan_chart(result, folder / "plan.png")
        print(f"plan.json, plan.md and plan.png written to {args.output}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Any registered training method's command: its recipe with the flags' overrides, the run folder, the run."""
    import torch

    from encoder_shrink.loading import load_pipeline
    from encoder_shrink.recipes import load_recipe
    from encoder_shrink.run_folder import check_run_folder
    from encoder_shrink.training.methods import get_training_method, resolve

    method = get_training_method(args.method)
    command = method.command
    overrides = {name: (True if kind is bool else value) for name, kind in command.overrides
                 if (value := getattr(args, name)) not in (None, False)}
    extra = resolve(command.recipe_overrides)(args) if command.recipe_overrides else {}
    # A misspelt recipe or field, a value the pipeline cannot take, or an output folder holding another run fails
    # here, before minutes of pipeline loading.
    recipe = load_recipe(args.recipe, method=method.name).with_overrides(**overrides, **extra)
    check_run_folder(args.output, {"method": method.name, "recipe": recipe.to_dict()}, resume=args.resume,
                     overwrite=args.overwrite)
    pipe = load_pipeline(args.pipeline, dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    line = resolve(command.run)(args, pipe, recipe, overrides, _parse_prompts(args.prompts))
    if os.environ.get("RANK", "0") == "0":  # (under `accelerate launch`, once: from the first process)
        print(line)
    return 0


def _cache(args: argparse.Namespace) -> int:
    import torch

    from encoder_shrink.data.readers import read_captions
    from encoder_shrink.distill.cache_job import build_teacher_cache
    from encoder_shrink.recipes import load_recipe

    if args.batch_size < 1:
        raise InvalidArgumentError(f"batch_size={args.batch_size} encodes nothing; pass at least 1.")
    recipe = load_recipe(args.recipe) if args.recipe else None
    prompts = [prompt for path in args.prompts for prompt in read_captions(path)]
    length = args.max_sequence_length or (recipe.max_sequence_length if recipe else None)
    report = build_teacher_cache(
        args.pipeline, prompts, args.cache_dir, max_sequence_length=length,
        negative_prompt=recipe.negative_prompt if recipe else "", batch_size=args.batch_size,
        dtype=getattr(torch, args.dtype),
    )
    per_text = report["bytes_per_text"]
    print(
        f"Process {report['process'] + 1}/{report['processes']}: encoded {report['encoded']} of {report['texts']} "
        f"texts ({report['already_cached']} already cached) into {report['directory']}; "
        + (f"{per_text / 2**20:.2f} MiB per text on disk" if per_text else "nothing new written")
    )
    return 0


def _choice(value: str | None):
    """`auto|yes|no` on the command line -> `"auto" | True | False` in the library (None: not given)."""
    return {"auto": "auto", "yes": True, "no": False, None: None}[value]


# Export options on the command line -> the config fields they set (each format takes the ones its config has).
EXPORT_FLAGS = {"int8": "--int8", "fp16": "--fp16", "optimize": "--optimize", "max_tokens": "--max-tokens",
                "quantize_wo": "--quantize-wo",
                "quantize_embeddings": "--quantize-embeddings", "quantize_attention": "--quantize-attention",
                "max_batch": "--max-batch", "timing_cache": "--timing-cache", "dtype": "--dtype"}


def _export(args: argparse.Namespace) -> int:
    from encoder_shrink.exporters import export, load_report
    from encoder_shrink.exporters.formats import config_from_options

    shorthands = [name for name, given in (("onnx", args.onnx), ("tensorrt", args.trt)) if given]
    if args.format and shorthands and shorthands != [args.format]:
        raise InvalidArgumentError(f"--format {args.format} and --{'trt' if args.trt else 'onnx'} disagree; pass one.")
    name = args.format or ("tensorrt" if args.trt else "onnx" if args.onnx else None)
    if name is None:
        raise InvalidArgumentError(
            "choose an export format: --format NAME (see --help), --onnx (with --int8 dynamic for int8 weights) or "
            "--trt."
        )
    # `--int8 none` is the default of the formats whose int8 is optional; OpenVINO, int8 by default, reads it.
    int8 = None if args.int8 == "none" and name != "openvino" else args.int8
    options = {"int8": int8, "fp16": args.fp16 or None, "optimize": args.optimize or None,
               "max_tokens": args.max_tokens,
               "quantize_wo": _choice(args.quantize_wo), "quantize_embeddings": _choice(args.quantize_embeddings),
               "quantize_attention": _choice(args.quantize_attention), "max_batch": args.max_batch,
               "timing_cache": args.timing_cache, "dtype": args.dtype}
    config = config_from_options(name, options, EXPORT_FLAGS)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    folder = export(args.student, args.output, config, tokenizer=tokenizer, overwrite=args.overwrite)
    report = load_report(folder)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".onnx", ".data", ".engine", ".safetensors"))
    line = f"Wrote {folder} ({name}, {report.get('precision', '?')}, {size / 2**20:.1f} MiB)"
    parity = report.get("parity")
    if parity:
        line += (f": cosine {parity['min_cosine']:.6f}, max abs error {parity['max_abs_error']:.3g}, relative L2 "
                 f"{parity['relative_l2']:.3g}, NaN {parity['nan']}, Inf {parity['inf']} against the torch student")
    print(line)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from encoder_shrink.evaluation import evaluate, get_metric, metric_config, registered_metrics
    from encoder_shrink.evaluation.metrics import check_available, check_prompts, options_for
    from encoder_shrink.exporters import load_encoder
    from encoder_shrink.files import atomic_write_text
    from encoder_shrink.loading import load_pipeline

    _quiet_libraries()
    if args.resolution is not None and args.pipeline != "toy":
        from encoder_shrink.loading import check_resolution

        check_resolution(args.pipeline, args.resolution)  # before anything is loaded
    names = list(dict.fromkeys(args.metric or (["checker"] if args.pipeline == "toy" else [])))
    options = {"clip": args.clip} if args.clip else {}
    for option in options:  # an option no chosen metric reads is a mistake, not something to ignore
        if not any(options_for(name, {option: None}) for name in names):
            readers = " or ".join(f"--metric {n}" for n in registered_metrics() if options_for(n, {option: None}))
            raise InvalidArgumentError(f"--{option} is read by no metric given; add {readers}, or drop --{option}.")
    toy = args.pipeline == "toy" or "checker" in names
    if args.prompts:
        from encoder_shrink.data import read_captions

        prompts = read_captions(args.prompts, limit=args.num_prompts)
    elif toy:
        from encoder_shrink.toy import sample_prompts

        prompts = [p.text for p in sample_prompts(args.num_prompts, "heldout", seed=1)]
    else:
        from encoder_shrink.data import generate_commontext

        prompts = generate_commontext(args.num_prompts, split="val")
    # Every metric is configured and checked (installed, its --options, the prompts it needs) before a pipeline is
    # loaded: a bad --metric fails at once.
    metrics = [metric_config(name, **options_for(name, options)) for name in names]
    for config in metrics:
        check_available(config)
        check_prompts(config, prompts)
    if args.pipeline == "toy":
        from encoder_shrink.toy.teacher import load_toy_teacher

        pipe = load_toy_teacher()
    else:
        pipe = load_pipeline(args.pipeline, dtype=getattr(torch, args.dtype))
        pipe.set_progress_bar_config(disable=True)
    students = {}
    for path in args.student:
        name = Path(path).name or "student"
        students[name if name not in students else f"{name}-{len(students)}"] = load_encoder(path)
    defaults = {}
    if args.pipeline == "toy":
        from encoder_shrink.toy.teacher import MAX_SEQUENCE_LENGTH, NUM_INFERENCE_STEPS
        from encoder_shrink.toy.world import IMAGE_SIZE

        defaults = {"num_inference_steps": NUM_INFERENCE_STEPS, "resolution": IMAGE_SIZE,
                    "max_sequence_length": MAX_SEQUENCE_LENGTH}
    guidance = {"guidance_scale": args.guidance_scale} if args.guidance_scale is not None else {}  # else the family's
    results = evaluate(
        pipe, students, prompts, metrics=metrics, **guidance,
        num_inference_steps=args.num_inference_steps or defaults.get("num_inference_steps", 20),
        resolution=args.resolution or defaults.get("resolution", 512),
        max_sequence_length=args.max_sequence_length or defaults.get("max_sequence_length"),
    )
    images = results.pop("images")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "results.json", json.dumps(results, indent=2))
    _image_grid(images, output / "grid.png")
    columns = [(name, figure) for name in names for figure in get_metric(name).headline]
    print("| encoder | denoiser rel. MSE | PSNR vs teacher (dB) |" + "".join(f" {n} {f} |" for n, f in columns))
    print("|---|---:|---:|" + "---:|" * len(columns))
    rows = {"teacher": {"denoiser_relative_mse": 0, "psnr_db": None, **results["teacher"]}, **results["students"]}
    for name, f in rows.items():
        psnr = "-" if f["psnr_db"] is None else f"{f['psnr_db']:.2f}"
        print(f"| {name} | {f['denoiser_relative_mse']:.4g} | {psnr} |"
              + "".join(f" {f[n][figure]:.3f} |" for n, figure in columns))
    print(f"\nWrote {output}/results.json and grid.png ({len(prompts)} prompts)")
    return 0


def _image_grid(images: dict, path: Path, count: int = 8) -> None:
    """One column per encoder (teacher first), one row per prompt, for the first `count` prompts."""
    import numpy as np
    from PIL import Image

    from encoder_shrink.files import atomic_path

    columns = [np.concatenate(list(v[:count]), axis=0) for v in images.values()]
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate(columns, axis=1)).save(tmp)


def _bench(args: argparse.Namespace) -> int:
    from encoder_shrink.benchmarks.bench import BenchConfig, markdown, run_bench

    config = BenchConfig(
        pipeline=args.pipeline,
        student=args.student,
        synthetic=args.synthetic,
        synthetic_student=args.synthetic_student,
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
        device=args.device,
        dtype=args.dtype,
        seq_len=args.seq_len,
        batch=args.batch,
        repeats=args.repeats,
        warmup=args.warmup,
        original_repeats=args.original_repeats,
        pipeline_steps=args.pipeline_steps,
        resolution=args.resolution,
        offload=args.offload,
        memory_fraction=args.memory_fraction,
    )
    results = run_bench(config, args.output)
    print(markdown(results))
    print(f"\nWrote {args.output}/results.json, results.md and results.png")
    failed = [n for n, f in {**results["encoders"], **results["pipelines"]}.items() if "error" in f]
    return 1 if failed else 0


def _recipes(args: argparse.Namespace) -> int:
    from encoder_shrink.recipes import load_recipe
    from encoder_shrink.training.methods import get_training_method, registered_training_methods

    for method in registered_training_methods():  # each method's, as `--recipe NAME` of its command takes them
        for name in get_training_method(method).bundled_recipes():
            recipe = load_recipe(name, method=method)
            target, student = recipe.listing()
            print(f"{name:22} v{recipe.version}  {target:13} {student:24} {recipe.total_steps:>7} steps  "
                  f"{recipe.description}")
    return 0


def _tiue_generate(args: argparse.Namespace) -> int:
    import torch

    from encoder_shrink.loading import load_pipeline
    from encoder_shrink.tiue import TiUEPipeline

    pipe = load_pipeline(args.pipeline, dtype=getattr(torch, args.dtype), pipeline_class=TiUEPipeline).to(args.device)
    if args.onnx:
        from encoder_shrink.exporters.tiue_onnx import OnnxTiUEUNet

        pipe = TiUEPipeline(**{**pipe.components, "unet": OnnxTiUEUNet.from_pretrained(args.onnx)},
                            timesteps=list(pipe.timesteps))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    images = pipe(args.prompt, num_images_per_prompt=args.num_images, generator=generator, height=args.resolution,
                  width=args.resolution).images
    from encoder_shrink.files import atomic_path

    for index, image in enumerate(images):
        with atomic_path(output / f"{index:03d}.png") as tmp:
            image.save(tmp)
    print(f"{len(images)} images of {len(args.prompt)} prompts written to {output} (one encoder pass, one batched "
          f"decoder pass over {list(pipe.timesteps)}{', ONNX Runtime' if args.onnx else ''})")
    return 0


def _tiue_export(args: argparse.Namespace) -> int:
    from encoder_shrink.exporters.formats import REPORT
    from encoder_shrink.exporters.tiue_onnx import export_tiue_onnx
    from encoder_shrink.loading import load_pipeline
    from encoder_shrink.tiue import TiUEPipeline

    pipe = load_pipeline(args.pipeline, pipeline_class=TiUEPipeline)
    pipe.set_progress_bar_config(disable=True)
    output = export_tiue_onnx(pipe, args.output, resolution=args.resolution, batch_size=args.batch_size,
                              overwrite=args.overwrite)
    parity = json.loads((output / REPORT).read_text())["parity"]
    print(f"TiUE UNet exported to {output} (one ONNX graph, batch {args.batch_size}); parity with torch: cosine "
          f"{parity['min_cosine']:.7f}, relative L2 {parity['relative_l2']:.2e}, NaN {parity['nan']}, Inf "
          f"{parity['inf']}")
    return 0


class _Names:
    """
    The names of a registry, read when a help text or a choice check first needs them: building the parser imports
    no registry, so `--help` costs only what the help shown names. Help texts name the set as `%(names)s`.
    """

    def __init__(self, names, describe=None):
        self._names, self._describe = names, describe

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __len__(self) -> int:
        return len(self._names())

    def __str__(self) -> str:
        if self._describe is None:
            return ", ".join(self)
        return "; ".join(f"{name} ({self._describe(name)})" if self._describe(name) else name for name in self)


def _families():
    from encoder_shrink.pipelines import registered_families

    return registered_families()


def _losses():
    from encoder_shrink.distill.losses import registered_losses

    return registered_losses()


def _recipe_names(method: str):
    from encoder_shrink.training.methods import get_training_method

    return lambda: list(get_training_method(method).bundled_recipes())


# The registries a training method's own options may name (`MethodCommand.arguments`).
_REGISTRY_NAMES = {"losses": lambda: _losses(), "sources": lambda: _sources(), "families": lambda: _families()}


def _synthetic_families():
    from encoder_shrink.pipelines import synthetic_families

    return synthetic_families()


def _gpu_names():
    from encoder_shrink.training.plan import GPUS

    return list(GPUS)


def _sources():
    from encoder_shrink.data import registered_prompt_sources

    return registered_prompt_sources()


def _formats():
    from encoder_shrink.exporters import registered_formats

    return registered_formats()


def _format_description(name: str) -> str:
    from encoder_shrink.exporters import get_format

    return get_format(name).description


def _metrics():
    from encoder_shrink.evaluation import registered_metrics

    return registered_metrics()


def _metric_description(name: str) -> str:
    from encoder_shrink.evaluation import get_metric

    return get_metric(name).description


def _backends():
    from encoder_shrink.benchmarks.bench import bench_backends

    return bench_backends()


def _synthetic_names():
    from encoder_shrink.benchmarks.synthetic import synthetic_names

    return synthetic_names()


class _Parser(argparse.ArgumentParser):
    """An argument parser whose description may be a callable, read only when its help is shown."""

    @property
    def description(self):
        return self._description() if callable(self._description) else self._description

    @description.setter
    def description(self, value):
        self._description = value


def _named(action: argparse.Action, names: _Names) -> argparse.Action:
    """Give `action` the registry its help names as `%(names)s`."""
    action.names = names
    return action


def build_parser() -> argparse.ArgumentParser:
    """The `encoder-shrink` parser. Registries (families, recipes, formats, ...) are read only by the help that shows
    them or the choice that checks them, so `encoder-shrink --help` imports neither torch nor diffusers."""
    families = _Names(_families)
    parser = _Parser(
        prog="encoder-shrink",
        description="Shrink the big text encoder of any diffusers text-to-image or text-to-video pipeline into a "
                    "small drop-in student (`encoder-shrink inspect` tells what it would do with yours).",
    )
    parser.add_argument("--version", action="version", version=f"encoder-shrink {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details, and show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="offline end to end on the bundled toy world: distil, export int8, evaluate, bench",
        description="On the bundled toy FLUX teacher: distil its T5 with the vision-based and the naive loss, export "
                    "int8 ONNX, score every encoder with the toy checker, bench them; write report.md, grid.png and "
                    "results.json. --drop-in runs the drop-in round trip on tiny random pipelines instead; --tiue "
                    "compares the toy SD teacher with its loop-free TiUE students.",
    )
    demo.add_argument("--output", help="folder for results (default: encoder-shrink-demo; with --tiue "
                                       "encoder-shrink-tiue-demo)")
    demo.add_argument("--teacher", help="toy teacher folder (default: the bundled one; with --tiue the SD one)")
    demo.add_argument("--tiue", action="store_true",
                      help="the TiUE demo: the toy SD teacher against its loop-free students (K = 4, K = 1) and "
                           "training-free encoder propagation")
    demo.add_argument("--students", help="with --tiue: folder of the k4/ and k1/ students (default: the bundled ones)")
    demo.add_argument("--eval-prompts", type=int, help="with --tiue: held-out prompts (default: 64, 16 per kind)")
    demo.add_argument("--seeds", type=int, help="with --tiue: seeds per prompt (default: 8)")
    demo.add_argument("--steps", type=int, help="distillation steps per student (default: the toy recipe's)")
    demo.add_argument("--drop-in", action="store_true",
                      help="instead: the drop-in round trip on tiny random pipelines of every family (--families)")
    demo.add_argument("--families", nargs="+", choices=families, metavar="FAMILY",
                      help="pipeline families to run (default: all of %(choices)s)")
    demo.add_argument("--seed", type=int, default=0)
    _register(demo, _demo, inputs=("teacher", "students"), output="output")

    # The training methods' commands (`distill`, `tiue distill`), each built from its registration.
    groups, added = {(): commands}, set()
    _add_training_commands(groups, added)

    tiue = commands.add_parser(
        "tiue",
        help="TiUE: distil an SD pipeline's UNet into a loop-free student, and sample with it",
        description="TiUE (arXiv 2505.21960): a UNet student whose encoder runs once and whose decoder runs for K "
                    "timesteps in one batch, distilled with variational score distillation and a KL term.",
    )
    tiue_commands = tiue.add_subparsers(dest="tiue_command", required=True, metavar="TIUE_COMMAND")
    groups[("tiue",)] = tiue_commands
    _add_training_commands(groups, added)
    tiue_generate = tiue_commands.add_parser(
        "generate", help="sample images with a TiUE pipeline folder",
        description="Sample with a TiUEPipeline (one encoder pass, one batched decoder pass); PNGs go to OUTPUT.",
    )
    tiue_generate.add_argument("--pipeline", required=True, help="TiUEPipeline folder (OUTPUT/pipeline of distill)")
    tiue_generate.add_argument("--prompt", nargs="+", required=True, help="prompt(s)")
    tiue_generate.add_argument("--num-images", type=int, default=1, help="images per prompt (default: %(default)s)")
    tiue_generate.add_argument("--seed", type=int, default=0)
    tiue_generate.add_argument("--resolution", type=int, help="image size in px (default: the UNet's)")
    tiue_generate.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    tiue_generate.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    tiue_generate.add_argument("--output", default="encoder-shrink-tiue-images",
                               help="folder for the PNGs (default: %(default)s)")
    tiue_generate.add_argument("--onnx", help="run the UNet from this `tiue export` folder with ONNX Runtime")
    _register(tiue_generate, _tiue_generate, inputs=("pipeline", "onnx"), output="output")
    tiue_export = tiue_commands.add_parser(
        "export", help="export a TiUE pipeline's UNet as one ONNX graph, checked against torch",
        description="Export the UNet of a TiUEPipeline (encoder, batched decoder, combine) as one ONNX graph; the "
                    "parity report goes to export_report.json; `tiue generate --onnx DIR` runs it.",
    )
    tiue_export.add_argument("pipeline", help="TiUEPipeline folder (OUTPUT/pipeline of tiue distill)")
    tiue_export.add_argument("--output", required=True, help="folder to create (must not exist)")
    tiue_export.add_argument("--batch-size", type=int, default=1, help="images per graph call (default: %(default)s)")
    tiue_export.add_argument("--resolution", type=int, help="image size in px (default: the UNet's)")
    tiue_export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _register(tiue_export, _tiue_export, inputs=("pipeline",), output="output")

    cache = commands.add_parser(
        "cache",
        help="encode prompts with a pipeline's teacher encoder alone into the cache distill reads",
        description="Encode prompt files with the pipeline's text encoder only (no denoiser or VAE is loaded) into "
                    "safetensors shards under --cache-dir, which `distill --cache-dir` with the same --pipeline "
                    "reads. Resumable (cached texts are skipped); under `accelerate launch` each process encodes its "
                    "share into its own shards. Reports the disk cost per text.",
    )
    cache.add_argument("--pipeline", required=True, help="pipeline id or local folder (model_index.json)")
    cache.add_argument("--prompts", nargs="+", required=True, metavar="PATH",
                       help="prompt files (.txt one per line, .json, .jsonl, .parquet)")
    cache.add_argument("--cache-dir", required=True, help="the cache folder distill --cache-dir reads")
    cache.add_argument("--recipe", help="take the length and negative prompt of this recipe")
    cache.add_argument("--max-sequence-length", type=int, help="encode at this length (default: the pipeline's)")
    cache.add_argument("--batch-size", type=int, default=8, help="texts per teacher call (default: %(default)s)")
    cache.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="dtype the teacher is loaded in")
    _register(cache, _cache, inputs=("pipeline", "prompts"), output="cache_dir")

    formats = _Names(_formats, _format_description)
    export = commands.add_parser(
        "export",
        help="export a student to a registered format (ONNX fp32/fp16/int8, TensorRT, distillt5 one-file layout)",
        description=lambda: "Export a saved student (our format or the reference's) to a folder that load_encoder and "
                            f"the pipelines load drop-in, checked against the torch student. Formats: {formats}.",
    )
    export.add_argument("student", help="folder of a saved student")
    export.add_argument("--format", choices=_Names(_formats), metavar="FORMAT", help="the export format: %(choices)s")
    export.add_argument(
        "--onnx", action="store_true", help="shorthand for --format onnx (T5 + projector in one graph)"
    )
    export.add_argument(
        "--fp16",
        action="store_true",
        help="onnx/tensorrt: fp16 graph for GPUs; wo, norms, residual stream and attention scores stay fp32",
    )
    export.add_argument("--int8", choices=["dynamic", "static", "none"],
                        help="onnx: dynamic: int8 weights, activations quantized at run time (CPU); static: QDQ graph "
                             "calibrated on prompts (for TensorRT); openvino: int8 unless 'none'")
    export.add_argument("--optimize", action="store_true",
                        help="onnx: ONNX Runtime's transformer fusions for T5 (norms with residual adds, GELU)")
    export.add_argument("--quantize-wo", choices=["auto", "yes", "no"],
                        help="int8: quantize the feed-forward output wo too (auto: only if measured harmless; "
                             "default: auto)")
    export.add_argument(
        "--quantize-embeddings",
        choices=["auto", "yes", "no"],
        help="int8: quantize the token embeddings too (auto: only if measured harmless; default: auto)",
    )
    export.add_argument("--quantize-attention", choices=["auto", "yes", "no"],
                        help="int8: quantize the self-attention q/k/v/o too (auto: only if measured harmless; "
                             "default: auto)")
    export.add_argument("--trt", action="store_true",
                        help="shorthand for --format tensorrt: a TensorRT engine in --output, its ONNX in OUTPUT-onnx")
    export.add_argument("--max-batch", type=int, help="tensorrt: largest batch of the profile (default: 4)")
    export.add_argument("--timing-cache", help="tensorrt: timing cache file to reuse and update")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="distillt5: dtype of the weights in the file (default: float32)")
    export.add_argument("--output", required=True, help="folder to create (must not exist)")
    export.add_argument("--tokenizer", help="tokenizer id/path for the parity prompts (default: random token ids)")
    export.add_argument(
        "--max-tokens", type=int, help="onnx/tensorrt: longest input the graph accepts (default: 2048)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _register(export, _export, inputs=("student", "tokenizer"), output="output")

    evaluation = commands.add_parser(
        "eval",
        help="students against the pipeline's teacher: denoiser MSE, image PSNR, metrics (checker, ocr, clip)",
        description="Generate with the teacher and each student on the same prompts and seeds; report the denoiser's "
                    "relative MSE along teacher trajectories, image PSNR and each --metric on every encoder's images.",
    )
    evaluation.add_argument(
        "--pipeline", required=True, help="pipeline id or folder, or 'toy' for the bundled toy teacher"
    )
    evaluation.add_argument("--student", nargs="+", required=True, help="student folders (torch, ONNX or TensorRT)")
    evaluation.add_argument(
        "--prompts", help="prompt file (txt/json/jsonl/parquet; default: held-out toy or CommonText)"
    )
    evaluation.add_argument("--num-prompts", type=int, default=64)
    _named(evaluation.add_argument(
        "--metric", action="append", metavar="NAME",
        help="score the images with a registered metric (repeatable; checker is the default with --pipeline toy): "
             "%(names)s",
    ), _Names(_metrics, _metric_description))
    evaluation.add_argument("--clip", help="local CLIP checkpoint folder (CLIPModel + processor) for --metric clip")
    evaluation.add_argument("--num-inference-steps", type=int)
    evaluation.add_argument("--resolution", type=int)
    evaluation.add_argument("--max-sequence-length", type=int)
    evaluation.add_argument("--guidance-scale", type=float, default=None,
                            help="FLUX-dev guidance / CFG scale (default: the pipeline's own default)")
    evaluation.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    evaluation.add_argument("--output", default="encoder-shrink-eval", help="results folder (default: %(default)s)")
    _register(evaluation, _eval, inputs=("pipeline", "student", "prompts", "clip"), output="output")

    bench = commands.add_parser(
        "bench",
        help="weights, peak memory and latency of the original encoder vs the student's backends",
        description="Measure the original encoder and each student backend, each in its own process, side by side; "
                    "with --pipeline-steps also whole generations. Writes results.json, results.md and results.png.",
    )
    source = bench.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="pipeline id or folder whose encoder slot holds the original encoder")
    source.add_argument("--synthetic", choices=_Names(_synthetic_names), metavar="NAME",
                        help="real architecture with random weights (no download): a T5 encoder size or a registered "
                             "family's published pipeline, its teacher included (%(choices)s)")
    bench.add_argument("--student", help="saved student folder (default with --synthetic: a random student)")
    bench.add_argument(
        "--synthetic-student",
        help="size of the random student (default: the family's recipe student, T5-base or UMT5-base)",
    )
    _named(bench.add_argument(
        "--backends",
        default="torch,onnx,onnx-int8",
        help="comma list of backends: %(names)s (default: %(default)s)",
    ), _Names(_backends))
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    bench.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["float32", "bfloat16", "float16"],
        help="torch dtype (default: %(default)s)",
    )
    bench.add_argument("--seq-len", type=int, default=512, help="tokens per encode (default: %(default)s, FLUX-dev's)")
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--repeats", type=int, default=5, help="timed encodes per variant (default: %(default)s)")
    bench.add_argument(
        "--original-repeats", type=int, help="timed encodes of the original (a T5-XXL encode takes minutes on a CPU)"
    )
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument(
        "--pipeline-steps", type=int, default=0, help=">0: also time whole generations with this many steps"
    )
    bench.add_argument("--resolution", type=int, default=1024, help="generation size in px (default: %(default)s)")
    bench.add_argument("--offload", action="store_true", help="also generate with enable_model_cpu_offload (CUDA)")
    bench.add_argument(
        "--memory-fraction", type=float, help="cap CUDA memory to this fraction (e.g. 24 GB / GPU total)"
    )
    bench.add_argument("--output", default="encoder-shrink-bench", help="results folder (default: %(default)s)")
    _register(bench, _bench, inputs=("pipeline", "student"), output="output")

    plan_ = commands.add_parser(
        "plan",
        help="before renting GPUs: memory per GPU (DDP / FSDP2), largest batch, FLOPs and GPU-hours of a recipe",
        description="Run one distill step of the pipeline's real architecture on fake tensors (no weights, no GPU) "
                    "under torch's memory tracker and FLOP counter, and report per GPU: peak memory split into "
                    "weights, gradients, optimizer state and activations for DDP and FSDP2, with and without "
                    "gradient checkpointing, the teacher resident or cached; the largest batch that fits; the step "
                    "time and GPU-hours; the teacher cache's size; and which accelerate config to launch with.",
    )
    _named(plan_.add_argument("--pipeline", required=True,
                              help="a family with a published architecture (%(names)s) or a local pipeline folder"),
           _Names(_synthetic_families))
    plan_.add_argument("--recipe", default="flux-t5base", help="recipe name or YAML path (default: %(default)s)")
    plan_.add_argument("--gpus", type=int, default=8, help="GPUs to run on (default: %(default)s)")
    plan_.add_argument("--gpu-memory", default="80GB", help="memory per GPU, e.g. 80GB, 24GB (default: %(default)s)")
    plan_.add_argument("--gpu", default="h100", choices=_Names(_gpu_names), metavar="GPU",
                       help="GPU whose bf16 peak sets the step time: %(choices)s (default: %(default)s)")
    plan_.add_argument("--utilisation", type=float, default=0.4,
                       help="share of the GPU's bf16 peak a step reaches (default: %(default)s)")
    plan_.add_argument("--slot", help="the text encoder to shrink (default: the family's)")
    plan_.add_argument("--output", help="folder for plan.json, plan.md and plan.png")
    _register(plan_, _plan, output="output")

    inspect_ = commands.add_parser(
        "inspect",
        help="what EncoderShrinker would do with a pipeline: family (registered or traced), slots, student, layers",
        description="Load a pipeline and report, as a table and JSON, what distilling it would do: the family "
                    "(a registered family file, or traced from its own __call__), every text-encoder slot with its "
                    "parameter count, the chosen slot, the student's kind and size, the call length and mask, the "
                    "layers read, the text-derived denoiser inputs and calls per step, and the expected weights "
                    "ratio. A pipeline the trace cannot serve gets one line saying why.",
    )
    inspect_.add_argument("--pipeline", required=True, help="pipeline id or local folder (model_index.json)")
    inspect_.add_argument("--slot", help="the text encoder to shrink (default: the family's, or the largest)")
    inspect_.add_argument("--trace", action="store_true", help="trace the pipeline even where a family file exists")
    inspect_.add_argument("--resolution", type=int,
                          help="height and width of the trace's probe runs (default: the pipeline's own)")
    inspect_.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                          help="dtype the pipeline is loaded in")
    inspect_.add_argument("--output", help="also write the JSON to this file")
    _register(inspect_, _inspect, inputs=("pipeline",), output="output")

    recipes = commands.add_parser("recipes", help="list the bundled recipes, one line each")
    _register(recipes, _recipes)

    convert = commands.add_parser(
        "convert",
        help="convert a reference DistillT5 checkpoint (T5EncoderWithProjection) into a student folder",
        description="Load a T5EncoderWithProjection checkpoint (folder or hub id) and save it as a student.",
    )
    convert.add_argument("source", help="folder or hub id of the reference checkpoint")
    convert.add_argument("--output", required=True, help="folder to write the student to")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    _register(convert, _convert, inputs=("source",), output="output")
    _add_training_commands(groups, added, create_groups=True)
    return parser


def _add_training_commands(groups: dict, added: set, create_groups: bool = False) -> None:
    """
    One command per registered training method whose group (`tiue` for `tiue distill`) is in `groups`; with
    `create_groups`, a missing group is made. Each gets every method's options, a flag per recipe override, and its
    own (`MethodCommand`); all run `_train`.
    """
    from encoder_shrink.training.methods import TRAINING_METHODS, registered_training_methods, resolve

    registered_training_methods()  # the built-in methods register on this first lookup
    for name, method in TRAINING_METHODS.items():
        command = method.command
        if command is None or name in added:
            continue
        group = command.words[:-1]
        if group not in groups:
            if not create_groups:
                continue
            parent = groups[group[:-1]] if group[:-1] in groups else groups[()]
            holder = parent.add_parser(group[-1], help=f"{group[-1]} commands")
            groups[group] = holder.add_subparsers(dest=f"{'_'.join(group)}_command", required=True,
                                                  metavar="COMMAND")
        parser = groups[group].add_parser(command.words[-1], help=command.help, description=command.description)
        parser.add_argument("--pipeline", required=True, help="pipeline id or local folder (model_index.json)")
        _named(parser.add_argument(
            "--recipe", default=command.default_recipe,
            help="recipe name (%(names)s; see `encoder-shrink recipes`) or YAML path (default: %(default)s)"),
            _Names(_recipe_names(name)))
        _named(parser.add_argument(
            "--prompts", nargs="+", metavar="[KIND=]PATH",
            help="one prompt file replacing the recipe's sources, or KIND=PATH per source (KIND: %(names)s)"),
            _Names(_sources))
        parser.add_argument("--output", default=command.default_output, help="output folder (default: %(default)s)")
        parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
        parser.add_argument("--overwrite", action="store_true",
                            help="delete an earlier run in --output and start over")
        parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                            help=command.dtype_help)
        for field_name, kind in command.overrides:
            flag = "--" + field_name.replace("_", "-")
            if kind is bool:
                parser.add_argument(flag, action="store_true", help=f"set the recipe's {field_name}")
            else:
                parser.add_argument(flag, type=kind, help="override the recipe's value")
        if command.arguments is not None:
            resolve(command.arguments)(parser, lambda kind: _Names(_REGISTRY_NAMES[kind]))
        parser.set_defaults(method=name)
        _register(parser, _train, inputs=("pipeline", "prompts"), output="output")
        added.add(name)


def _register(parser: argparse.ArgumentParser, func, inputs: tuple[str, ...] = (), output: str | None = None) -> None:
    """
    A subcommand: the function it runs, the options that name what it reads (folders, files or hub ids) and the one
    that names what it writes. `main` checks them before the function runs: a missing input or an output that cannot
    be written is one line and exit 2, and nothing is written. Every subcommand registers here (a test walks them).
    """
    parser.set_defaults(func=func, input_options=inputs, output_option=output, leaf_parser=parser)


def _check_paths(args: argparse.Namespace) -> None:
    from encoder_shrink.errors import InputNotFoundError
    from encoder_shrink.files import require_writable
    from encoder_shrink.loading import require_folder_or_hub_id

    if args.output_option and getattr(args, args.output_option, None) is not None:
        require_writable(getattr(args, args.output_option), "output")
    for dest in args.input_options:
        values = getattr(args, dest, None)
        for value in [] if values is None else values if isinstance(values, list) else [values]:
            if dest == "prompts":  # prompt files and folders are local: `[KIND=]PATH`
                path = value.partition("=")[2] if "=" in value and not Path(value).exists() else value
                if not Path(path).exists():
                    raise InputNotFoundError(f"prompt file {path} does not exist; pass an existing file or folder.")
            else:
                require_folder_or_hub_id(value, dest.replace("_", " "))


# Library parameter names that the command line spells otherwise (its option's dest).
_LIBRARY_NAMES = {"output_dir": "output"}
# A filesystem error a user can fix, by errno: what to do about it.
_FILESYSTEM_FIXES = {
    errno.EROFS: "the location is read-only: choose a writable {flag}",
    errno.EACCES: "no permission to write there: choose a writable {flag} or fix its permissions",
    errno.EPERM: "no permission to write there: choose a writable {flag} or fix its permissions",
    errno.ENOSPC: "the disk is full: free space there or choose {flag} on another disk, then run again",
    errno.EDQUOT: "the disk quota is used up: free space there or choose {flag} on another disk, then run again",
    errno.EFBIG: "the file is too large for that file system: choose {flag} on another disk",
    errno.ENOTDIR: "a file stands where a folder must go: choose another {flag}",
    errno.EEXIST: "a file stands where a folder must go: choose another {flag}",
}


def _filesystem_errno(error: BaseException) -> int | None:
    """The errno of an OSError, or of one that safetensors' writer reports in its own error type (`(os error 28)`)."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"\(os error (\d+)\)", str(error)) if type(error).__name__ == "SafetensorError" else None
    return int(found.group(1)) if found else None


def _in_cli_words(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in the command line's words: `overwrite=True` -> `--overwrite`, `batch_size=0` ->
    `--batch-size 0`, `output_dir` -> `--output`, for every option the subcommand has."""
    for action in parser._actions:
        flags = [option for option in action.option_strings if option.startswith("--")]
        if not flags:
            continue
        for name in [action.dest, *(k for k, v in _LIBRARY_NAMES.items() if v == action.dest)]:
            if isinstance(action, argparse._StoreTrueAction):
                message = re.sub(rf"(?<![\w.]){name}=True\b", flags[0], message)
            else:
                message = re.sub(rf"(?<![\w.-]){name}=", f"{flags[0]} ", message)
            if name in _LIBRARY_NAMES:
                message = re.sub(rf"(?<![\w.-]){name}\b", flags[0], message)
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_paths(args)  # before the command runs: a wrong path is refused at once, nothing written
        _quiet_libraries()
        return args.func(args)
    except EncoderShrinkError as error:
        # Errors raised on purpose name the problem and the fix in one line; anything else is a bug and keeps its
        # traceback.
        caught, message = error, str(error)
    except Exception as error:  # a full disk, a read-only or foreign folder met while writing: also one line
        code = _filesystem_errno(error)
        if code not in _FILESYSTEM_FIXES:
            raise
        output = getattr(args, args.output_option) if args.output_option else None
        flag = f"--{args.output_option.replace('_', '-')}" if args.output_option else "output location"
        caught = error
        where = getattr(error, "filename", None) or output or "the output"
        message = f"cannot write {where}: " + _FILESYSTEM_FIXES[code].format(flag=flag)
    if args.verbose:
        traceback.print_exception(caught)
    print(f"{args.leaf_parser.prog}: error: {_in_cli_words(message, args.leaf_parser)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
