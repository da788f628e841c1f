"""What the commands share: size types, flags whose defaults live in the library, and
`load_store`, which turns the streaming flags into one `LoadOptions` and loads the store."""

from __future__ import annotations

import click

from mlxstore.sizes import parse_size


class Size(click.ParamType):
    """A byte count written like 5GB, 512MiB or 1048576 (units as mlxstore.sizes reads them)."""

    name = "size"

    def convert(self, value, param, ctx) -> int:
        try:
            return parse_size(value)
        except (TypeError, ValueError) as e:
            self.fail(str(e), param, ctx)


class LibraryDefault:
    """A flag's default read from the library when it is needed (parsing, or --help).

    Each default lives once, in the library (`moe.options.LoadOptions`, `ServeOptions`,
    `generate_text`); the flag names where. Reading it late keeps `mlxstore --help` from
    importing MLX and mlx-lm.
    """

    def __init__(self, module: str, name: str, param: str | None = None):
        self.module, self.name, self.param = module, name, param

    def value(self):
        import importlib
        import inspect

        obj = importlib.import_module(self.module)
        for part in self.name.split("."):
            obj = getattr(obj, part)
        return obj if self.param is None else inspect.signature(obj).parameters[self.param].default


class Option(click.Option):
    """click.Option that resolves a `LibraryDefault`."""

    def get_default(self, ctx, call=True):
        value = super().get_default(ctx, call=call)
        return value.value() if isinstance(value, LibraryDefault) else value


def load_default(field: str) -> LibraryDefault:
    return LibraryDefault("mlxstore.moe.options", f"LoadOptions.{field}")


def serve_default(field: str) -> LibraryDefault:
    return LibraryDefault("mlxstore.moe.server", f"ServeOptions.{field}")


def generate_default(param: str) -> LibraryDefault:
    return LibraryDefault("mlxstore.moe.generate", "generate_text", param)


def option(*decls, **kw):
    """`click.option` whose default may be a `LibraryDefault`."""
    return click.option(*decls, cls=Option, **kw)


class SizeText(Size):
    """A size checked like `Size` but kept as typed, so errors can answer in the user's unit."""

    def convert(self, value, param, ctx) -> str:
        super().convert(value, param, ctx)
        return value


def memory_options() -> list:
    """The flags of `moe.load` that change what the plan holds besides slots (`load_options`
    and `mlxstore plan` share them, so a plan is made as the load will be)."""
    return [
        option("--prefetch", type=click.Choice(["none", "temporal", "next-layer", "next-layer-read"]), show_default=True,
               default=load_default("prefetch"), help="Expert prefetch: OS hints, or next-layer-read (read into host "
                                                      "buffers the plan counts)."),
        click.option("--fill", type=click.Choice(["direct", "staged"]), default=None,
                     help="How a missed expert reaches its slot: read straight into it, or staged through a device "
                          "array (default: by backend, staged on CUDA)."),
        option("--staged-load-size", default=load_default("staged_load_size"), show_default=True,
               help="Staged fill: bytes of each of its two host buffers (at least the largest expert); the disk "
                    "fills one while the GPU copies from the other."),
    ]  # fmt: skip


def load_options(command):
    """The flags every command that loads a store for generation shares (`moe.load`'s options)."""
    options = [
        click.option("--model", "model_path", required=True, help="Path of an mlxstore store."),
        click.option("--memory-budget", type=SizeText(), default=None,
                     help="Whole footprint, e.g. 8GB, 8GiB, 8000MB or bytes; default plans from available memory."),
        click.option("--slots-per-layer", type=click.IntRange(min=1), default=None,
                     help="Fix the expert bank size (overrides the budget)."),
        option("--max-context", type=click.IntRange(min=1), show_default=True,
               default=load_default("max_context"),
               help="KV cache tokens the budget reserves (longer prompts are refused)."),
        click.option("--headroom", type=SizeText(), default=None,
                     help="Bytes of the budget kept free for activations (default 5%, at least 64 MiB)."),
        option("--policy", default=load_default("policy"), show_default=True,
               help="Expert slot replacement policy: lru, fifo, lfuda, lrfu, lru2, s3fifo."),
        option("--page-cache", type=click.Choice(["keep", "drop"]), show_default=True,
               default=load_default("page_cache"),
               help="Keep a read expert's pages in the OS cache (a second tier outside the budget), or drop them."),
        click.option("--check", is_flag=True, help="Verify the checksum of every expert read."),
        click.option("--prefill-step-size", type=click.IntRange(min=1), default=None,
                     help="Prompt tokens per forward pass (default: the largest power of two up to 2048 whose activations fit the budget)."),
        option("--past-max-context", type=click.Choice(["stop", "warn"]), default=load_default("past_max_context"), show_default=True,
                     help="When the context would pass --max-context: stop with an error, or warn once and go on past the budget."),
        *memory_options(),
        option("--staged-copy", type=click.Choice(["slices", "scatter"]), default=load_default("staged_copy"),
               show_default=True, help="Staged fill: copy a load of experts into the slots with a slice update "
                                       "per expert and tensor, or one scatter per tensor."),
        option("--hits-first/--no-hits-first", default=load_default("hits_first"), show_default=True,
               help="A call with misses launches its resident experts' rows before the misses are read, then "
                    "the missed rows (a second launch)."),
        option("--overlap/--no-overlap", default=load_default("overlap"), show_default=True,
               help="Launch each streamed layer's expert kernels at once, while Python builds the next layer "
                    "(one more eval per layer)."),
        option("--optimistic/--no-optimistic", default=load_default("optimistic"), show_default=True,
               help="Run decode steps that follow a step without misses on the device's slot tables, with one "
                    "host check per step instead of one per layer (a step that missed runs again)."),
    ]  # fmt: skip
    for decorate in reversed(options):
        command = decorate(command)
    return command


def load_store(kw: dict, prompt_cache_bytes: int | None = 0, group=None):
    """`(model, tokenizer, name, reserved)` from `load_options`' values (and a command's own
    `kv_bits`, `kv_group_size`, `max_kv_size`, which the plan counts); one-line errors.

    prompt_cache_bytes: bytes of the budget to reserve for a prefix cache; None reserves
    one KV cache at --max-context (the server's default). group: the distributed group
    whose ranks run the model as a pipeline (None: one process).
    """
    from pathlib import Path

    from mlxstore import moe
    from mlxstore.formats import StoreError
    from mlxstore.moe.load import kv_cache_bytes
    from mlxstore.moe.options import LoadOptions
    from mlxstore.moe.plan import CacheOptions
    from mlxstore.store import open as open_store

    try:
        with open_store(kw["model_path"]) as store:
            cache = CacheOptions(kw.get("kv_bits"), kw.get("kv_group_size") or 64, kw.get("max_kv_size"))
            reserved = kv_cache_bytes(store, kw["max_context"], cache) if prompt_cache_bytes is None else prompt_cache_bytes
            options = LoadOptions(
                memory_budget=kw["memory_budget"], slots_per_layer=kw["slots_per_layer"],
                max_context=kw["max_context"], headroom=kw["headroom"], policy=kw["policy"],
                prefetch=kw["prefetch"], page_cache=kw["page_cache"], check=kw["check"], reserve=reserved,
                prefill_step_size=kw["prefill_step_size"], past_max_context=kw["past_max_context"],
                kv_bits=kw.get("kv_bits"), kv_group_size=kw.get("kv_group_size") or 64, max_kv_size=kw.get("max_kv_size"),
                fill=kw.get("fill"), staged_load_size=kw["staged_load_size"], staged_copy=kw["staged_copy"],
                overlap=kw["overlap"], hits_first=kw["hits_first"], optimistic=kw["optimistic"],
            )  # fmt: skip
            model, tokenizer = moe.load_with(store, options, group=group)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    return model, tokenizer, Path(kw["model_path"]).name, reserved


def prefill_step(model, asked: int | None) -> int:
    """The prefill step generation must use: the plan's (which honours --prefill-step-size)."""
    from mlxstore import moe
    from mlxstore.moe.plan import MAX_PREFILL_STEP

    plan = moe.plan_of(model)
    return plan.prefill_step_size if plan is not None else asked or MAX_PREFILL_STEP


def check_trace_target(path: str) -> None:
    """Refuse a --record-trace path that holds anything but a previous trace (one line)."""
    from mlxstore.moe import record

    try:
        record.check_target(path)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def start_recording(model, path: str, name: str):
    """Install a routing recorder on `model` (moe.record); one-line errors."""
    from mlxstore.moe import record

    try:
        return record.record(model, path, name=name)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


def stop_recording(model, recorder) -> None:
    from mlxstore.moe import record

    record.stop(model)
    click.echo(f"recorded {recorder.tokens} tokens x {recorder.num_layers} MoE layers to {recorder.path}", err=True)
