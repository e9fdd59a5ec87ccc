"""The ``stl10sim`` command line: parse, call the library, format, map errors to exit codes.

Nothing else lives here. stdout carries results only; progress and notes go to stderr. Every
option's default, choices and range come from ``params.py``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

from stl10_similarity import params as P
from stl10_similarity.errors import Stl10SimError, os_error_reason

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# library parameter names (as error messages write them) -> the flag a CLI user types
FLAGS = {"verify=False": "--no-verify", "wait=False": "--no-wait", "force=True": "--force", "force": "--force",
         "archive=PATH": "--archive PATH", "weights=PATH": "--weights PATH", "methods": "--method",
         "budgets": "--budget", "k": "-k"}


def flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


DEBUG, ON_INTERRUPT = "stl10sim.debug", "stl10sim.on_interrupt"  # keys in click's context meta (shared by all)


def _set_debug(ctx: click.Context, _param: Any, value: bool) -> None:
    if value:
        ctx.meta[DEBUG] = True


def interrupted_keeps(ctx: click.Context, what: str) -> None:
    """What a long command keeps when it is interrupted (said after "Interrupted: ")."""
    ctx.meta[ON_INTERRUPT] = what


class Stl10SimCommand(click.Command):
    """Every command also takes --debug after its name, where users put it as often as before it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True,
                                        callback=_set_debug, help="Show tracebacks instead of one-line errors."))


class Stl10SimGroup(click.Group):
    """Maps library errors to one line on stderr and an exit code (2: bad input, 1: other)."""

    command_class = Stl10SimCommand

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        """click's main, with a usage error as one line too (click prints the usage block, a hint and the error):
        ``Error: <what> (stl10sim CMD --help)``, exit 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = f" ({exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            click.echo(f"Error: {shown(exc.format_message())}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.params.get("debug"):
            ctx.meta[DEBUG] = True
        try:
            return super().invoke(ctx)
        except Stl10SimError as exc:
            if ctx.meta.get(DEBUG):
                raise
            click.echo(f"Error: {shown(exc.render(flag))}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:  # one the library did not expect (a full disk mid-write, say): one line, not a traceback
            if ctx.meta.get(DEBUG):
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"Error: {shown(os_error_reason(exc) + where)}; add --debug for the traceback", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            kept = ctx.meta.get(ON_INTERRUPT)
            click.echo(f"Interrupted: {kept}." if kept else "Interrupted.", err=True)
            ctx.exit(130)


class ConsoleProgress:
    """The library's progress protocol on stderr: tqdm bars and note lines, silenced by ``-q``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def note(self, message: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(shown(message), file=sys.stderr)  # above any bar in progress, not in the middle of it

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0) -> Any:
        from tqdm import tqdm

        # bytes (a download): scaled units, and the final line stays to show size and rate
        size = {"unit_scale": True, "unit_divisor": 1024, "leave": True} if unit == "B" else {"leave": False}
        return tqdm(total=total or None, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=self.quiet,
                    **size)


UNSHOWN = ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")  # Unicode categories a terminal would act on, or can't show


def shown(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters (escape sequences, newlines, bidi
    overrides, line separators) written as visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), never executed. A
    file name can hold any of them; JSON output keeps the real name."""
    if text.isprintable():
        return text
    import unicodedata

    return "".join(_escape(c) if unicodedata.category(c) in UNSHOWN else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def _progress(ctx: click.Context) -> ConsoleProgress:
    return ConsoleProgress(bool(ctx.find_root().params.get("quiet")))


def _echo_json(obj: Any) -> None:
    from stl10_similarity import json_text

    click.echo(json_text(obj))


def param_option(cls: type, name: str, *decls: str, **kwargs: Any) -> Any:
    """A click option whose default, choices and range are the parameter class's own."""
    default, meta = P.spec(cls, name)
    if meta.get("choices"):
        kwargs.setdefault("type", click.Choice(meta["choices"]))
    elif meta.get("low") is not None or meta.get("high") is not None:
        kwargs.setdefault("type", click.IntRange(meta.get("low"), meta.get("high")))
    kwargs.setdefault("default", default)
    kwargs.setdefault("show_default", kwargs["default"] is not None)
    return click.option(*(decls or (flag(name),)), **kwargs)


cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Artifacts folder. Default: $STL10SIM_CACHE_DIR, else the platform's user cache dir.",
)
data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where stl10_binary/ is. Default: $STL10SIM_DATA_DIR, else data/ under the cache dir.",
)
collection_option = click.option(
    "--collection", default=P.DEFAULT_COLLECTION, show_default=True, metavar="NAME",
    help="Which collection: stl10, or one made with `extract --images DIR --collection NAME`.")


def engine_options(what: str) -> Any:
    """``--engine`` and the Ray options, for the commands that can run on a cluster."""
    def decorate(command: Any) -> Any:
        for option in reversed([
            param_option(P.EngineParams, "engine", help=f"Where {what} runs: in this process, or on Ray (the ray extra: "
                                                        "pip install 'stl10sim[ray]'; docs/scale-out.md)."),
            click.option("--address", default=None, metavar="HOST:PORT",
                         help="--engine ray: the cluster's head (host:port, ray://host:port or auto). Default: "
                              "a local Ray started for this command."),
        ]):
            command = option(command)
        return command
    return decorate


def _engine(engine: str, address: str | None, actors: int | None = None,
            gpus_per_actor: float = 0.0) -> P.EngineParams:
    return P.EngineParams(engine=engine, address=address, actors=actors, gpus_per_actor=gpus_per_actor)


def _home(cache_dir: Path | None, collection: str) -> Path:
    """The folder holding a collection's artifacts (extract makes it when it is new)."""
    from stl10_similarity import collection_home, resolve_cache_dir

    return collection_home(resolve_cache_dir(cache_dir), collection)


def _existing(cache_dir: Path | None, collection: str) -> Path:
    """The folder of a collection that must exist already: an unknown name lists the ones there are."""
    from stl10_similarity import existing_collection, resolve_cache_dir

    return existing_collection(resolve_cache_dir(cache_dir), collection)


def _picture_path(ctx: click.Context, _param: Any, path: Path | None) -> Path | None:
    if path is not None:
        from stl10_similarity import picture_format

        picture_format(path)  # while parsing, before any work: a name whose format we can't write
    return path


def picture_option(help: str) -> Any:
    """``--png PATH``: a picture the command writes, in the format its suffix names (checked at once)."""
    return click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        callback=_picture_path, help=f"{help} ({', '.join(P.PICTURE_FORMATS)})")


no_wait_option = click.option("--no-wait", is_flag=True, help="Fail at once if another command holds the cache dir.")
candidates_option = param_option(
    P.SearchParams, "candidates",
    help=f"The candidate budget. rerank gathers a pool of {P.POOL_FACTOR}x as many from the forest (growing as "
    f"(N / {P.POOL_GROWTH_FROM:,})^{P.POOL_GROWTH} beyond {P.POOL_GROWTH_FROM:,} images) and orders by exact cosine "
    f"the pool's best 1/20 by the index's {P.PROJECTION_DIMS}-direction projection (1/10 when its directions hold "
    f"under {P.PROJECTION_TRUSTED} of the variance), or, where they hold under {P.PROJECTION_USEFUL}, this many "
    f"sharing the most top-K dimensions with the query; forest orders the same pool by estimated Jaccard.",
)
force_option = click.option("--force", is_flag=True, help="Rebuild even if a matching cached result exists.")
device_option = param_option(P.ExtractParams, "device", help="auto: a CUDA GPU, else Apple's MPS, else the CPU.")
weights_option = click.option("--weights", default=P.ExtractParams.weights, show_default=True,
                              metavar="imagenet|none|PATH",
                              help="ImageNet weights (downloaded once), a seeded random init, or a local state dict.")
image_size_option = param_option(P.ExtractParams, "image_size", help="Model input size; 96 px images are upsampled to it.")


@click.group(cls=Stl10SimGroup, context_settings=CONTEXT)
@click.version_option(package_name="stl10sim", prog_name="stl10sim")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(quiet: bool, debug: bool) -> None:
    """Image similarity search over STL-10: MobileNetV2 features, MinHash, LSH forest.

    First run: `stl10sim extract` (gets STL-10 too), then `stl10sim query --image-id 42`
    (builds the index when it is missing). `download` and `index` give more control.
    """


# ---------------------------------------------------------------- download


archive_option = click.option(
    "--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="Unpack this stl10_binary.tar.gz instead of downloading (nothing to do if the data came from it).")
no_verify_option = click.option("--no-verify", is_flag=True,
                                help="Accept data that doesn't match the official MD5s (warns).")


@main.command()
@data_dir_option
@archive_option
@no_verify_option
@cache_dir_option
@click.pass_context
def download(ctx: click.Context, data_dir: Path | None, archive: Path | None, no_verify: bool, cache_dir: Path | None) -> None:
    """Fetch STL-10 (or unpack --archive) into the data dir and verify it once.

    Sources, in order: --archive; files already in place; stl10_binary.tar.gz in the data dir; the
    network ($STL10SIM_URL overrides the address). An interrupted download resumes.
    """
    from stl10_similarity import resolve_data_dir, stl10

    target = resolve_data_dir(data_dir, cache_dir)
    interrupted_keeps(ctx, "the bytes downloaded so far are kept; rerun the same command to resume")
    result = stl10.download(target, archive=archive, verify=not no_verify, progress=_progress(ctx))
    counts = ", ".join(f"{part} {n}" for part, n in result.counts.items())
    state = "verified" if result.verified else "NOT verified (--no-verify)"
    click.echo(f"STL-10 in {result.root} ({result.source}; {state}): {counts}")


# ---------------------------------------------------------------- extract


@main.command()
@param_option(P.ExtractParams, "split", help="Which images form the collection (train then test, then unlabeled).")
@param_option(P.ExtractParams, "limit", help="Only the first N images of the split.")
@param_option(P.ExtractParams, "batch_size",
              help="Images per forward pass. Default on a CPU: 4 (fp32) or 8 (bf16) at 224 px, more for "
                   "smaller inputs (32/64 at 96 px); 64 on a GPU.")
@device_option
@weights_option
@image_size_option
@param_option(P.ExtractParams, "precision",
              help="Network precision; auto: bf16 on a CPU with native bfloat16 (AVX512-BF16 or AMX), "
                   "fp32 elsewhere (docs/performance.md).")
@param_option(P.ExtractParams, "chunk_size", help="Images per resumable chunk: a killed run loses at most one chunk.")
@data_dir_option
@archive_option
@no_verify_option
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A folder of your own images (searched recursively) as the collection --collection NAME.")
@engine_options("embedding")
@param_option(P.EngineParams, "actors", help="--engine ray: embedding actors, each holding one model. Default: one "
                                             "per CPU of the cluster (or per --gpus-per-actor GPUs).")
@click.option("--gpus-per-actor", type=click.FloatRange(0, 64), default=P.EngineParams.gpus_per_actor,
              show_default=True, help="--engine ray: GPUs each actor holds (0: actors embed on CPUs).")
@collection_option
@cache_dir_option
@force_option
@no_wait_option
@click.pass_context
def extract(ctx: click.Context, split: str, limit: int | None, batch_size: int | None, device: str, weights: str,
            image_size: int, precision: str, chunk_size: int, data_dir: Path | None, archive: Path | None,
            no_verify: bool, images: Path | None, engine: str, address: str | None, actors: int | None,
            gpus_per_actor: float, collection: str, cache_dir: Path | None, force: bool, no_wait: bool) -> None:
    """Compute 1280-D MobileNetV2 features for the collection (resumable, cached).

    Gets STL-10 first, exactly as `stl10sim download` does, when the data dir has none (or --archive is
    given). Splits: train (5,000), test (8,000), train+test (13,000), unlabeled (100,000), all; an
    image's id is its 0-based position in train, then test, then unlabeled order.

    The weights' own preprocessing (resize 232, centre crop 224, ImageNet normalisation; scaled with
    --image-size) runs on whole uint8 batches read straight from STL-10's binary files; BatchNorm is
    folded into the convolutions; the pooled 1280 values are L2-normalised. Work is saved in chunks:
    rerunning after Ctrl-C or a kill resumes, and the same parameters again do nothing (--force redoes).

    --images DIR --collection NAME makes a collection of your own photos. Rerunning extract --collection
    NAME updates it: only new or changed files are embedded (with the collection's weights, size and
    precision unless given), ids stay and are never reused, and one line says
    "N new, C changed, R removed, U unchanged"; the index is then updated in place.

    --engine ray embeds a folder collection's new and changed files on Ray actors (a local Ray, or the
    cluster at --address); planning and the commit stay here, so ids, artifacts and features are the same.
    """
    from stl10_similarity import extract as run_extract
    from stl10_similarity import params_as_before, recorded_folder, resolve_data_dir, stl10

    params = P.ExtractParams(split=split, limit=limit, batch_size=batch_size, device=device, weights=weights,
                             image_size=image_size, precision=precision, chunk_size=chunk_size)
    progress = _progress(ctx)
    home = _home(cache_dir, collection)
    runs_on = _engine(engine, address, actors, gpus_per_actor)
    if collection == P.DEFAULT_COLLECTION:
        if images is not None:
            raise click.UsageError("--images makes a collection of your own: name it with --collection NAME")
        if engine != "local":
            raise click.UsageError("--engine ray embeds folder collections (--images DIR --collection NAME); "
                                   "STL-10 is extracted in-process")
        interrupted_keeps(ctx, "downloaded bytes and finished chunks of features are kept; rerun the same "
                               "command to resume")
        source = stl10.open_or_download(resolve_data_dir(data_dir, cache_dir), split, limit, archive=archive,
                                        verify=not no_verify, progress=progress)
    else:
        if archive is not None or no_verify:
            raise click.UsageError("--archive and --no-verify are for STL-10, not for --images collections")
        if split != P.ExtractParams.split or limit is not None:
            raise click.UsageError("--split and --limit are for STL-10: a folder collection holds every image in it")
        given = {name for name in ("weights", "image_size", "precision")
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
        params = params_as_before(home, params, given) if not force else params
        interrupted_keeps(ctx, "finished chunks of features are kept and the collection is as it was; rerun the "
                               "same command to resume")
        _extract_folder(home, images or recorded_folder(home), params, force, no_wait, progress, runs_on)
        return
    result = run_extract(source, home, params, force=force, wait=not no_wait, progress=progress)
    if result.cached:
        click.echo(f"features for {result.n} images already in {result.folder} (cached; --force rebuilds)")
    else:
        resumed = f", resumed after {result.resumed_chunks} chunks" if result.resumed_chunks else ""
        p = result.manifest["params"]
        click.echo(f"features for {result.n} images in {result.folder} ({result.seconds:.1f} s{resumed}; "
                   f"{p['device']}, {p['precision']}, batch {p['batch_size']})")


def _extract_folder(home: Path, root: Path, params: P.ExtractParams, force: bool, no_wait: bool,
                    progress: ConsoleProgress, engine: P.EngineParams) -> None:
    """Create or update a folder collection: one summary line on stdout, warnings on stderr."""
    from stl10_similarity import runner_for, summary_line, update_folder

    result = update_folder(root, home, params, force=force, wait=not no_wait, progress=progress,
                           runner=runner_for(engine))
    if result.skipped:
        progress.note(f"skipped {len(result.skipped)} file(s) (unreadable, or not regular files inside the folder); "
                      "they are listed in the features manifest")
    assert result.counts is not None
    resumed = f", resumed after {result.resumed_chunks} chunks" if result.resumed_chunks else ""
    done = "up to date" if result.cached else f"{result.seconds:.1f} s{resumed}"
    click.echo(f"{summary_line(result.counts)}: {result.n} images in {result.folder} ({done})")


# ---------------------------------------------------------------- duplicates


def _fraction(name: str, help: str) -> Any:
    return click.option(f"--{name}-threshold", name.replace("-", "_"), type=click.FloatRange(0.0, 1.0, min_open=True),
                        default=getattr(P.DuplicatesParams, name), show_default=True, help=help)


@main.command()
@click.option("--kind", "kinds", multiple=True, type=click.Choice(P.DUPLICATE_KINDS),
              help="Which groups to list (repeat for several). Default: exact and near.")
@_fraction("near", "Pixel correlation (0-1) at which a candidate pair is the same picture.")
@_fraction("similar", "Feature cosine at which two images are similar (--kind similar).")
@click.option("--keep", default=P.DuplicatesParams.keep, show_default=True,
              metavar="largest|oldest|newest|prefer:PREFIX",
              help="Which image a group keeps: the most pixels (then the largest file, then the shortest path), "
                   "the oldest or newest file, or the first whose path starts with PREFIX.")
@click.option("--json", "as_json", is_flag=True, help="One group per line (docs/json.md).")
@click.option("--csv", "as_csv", is_flag=True, help="One row per image: group, kind, id, path, keep, cosine, ...")
@picture_option("Draw every group listed, 20 a page: PATH, then PATH-2, PATH-3, ...")
@click.option("--move-to", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Move every image its group doesn't keep to the same path below this folder (outside the "
                   "collection's); writes an undo record there first. Nothing is deleted.")
@click.option("--dry-run", is_flag=True, help="With --move-to: list what would move, move nothing.")
@click.option("--undo", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="RECORD",
              help="Put back every file a --move-to moved, byte-identical (the record it printed).")
@engine_options("the search for candidate pairs")
@collection_option
@cache_dir_option
@click.pass_context
def duplicates(ctx: click.Context, kinds: tuple[str, ...], near: float, similar: float, keep: str, as_json: bool,
               as_csv: bool, png: Path | None, move_to: Path | None, dry_run: bool, undo: Path | None, engine: str,
               address: str | None, collection: str, cache_dir: Path | None) -> None:
    """List groups of duplicates, choose the image each keeps, and move the others out (undoably).

    exact: byte-identical files. near: the same picture re-encoded, resized, cropped or recoloured a little
    (candidates from the LSH forest, never all pairs, confirmed by their pixels). similar: images whose features'
    cosine reaches --similar-threshold (other shots of the same scene), listed only when asked. A group of a
    looser kind holds the stricter groups it joins. Builds the index first if needed. docs/collections.md has
    the workflow: list, --move-to DIR --dry-run, --move-to DIR, and --undo RECORD.
    """
    from stl10_similarity import Session, undo_moves

    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    if dry_run and move_to is None:
        raise click.UsageError("--dry-run goes with --move-to DIR")
    if undo is not None:
        if move_to is not None or png is not None:
            raise click.UsageError("--undo puts files back: it takes no --move-to or --png")
        report = undo_moves(undo, progress=_progress(ctx))
        _progress(ctx).note(f"put back {report.restored} file(s); {report.in_place} already in place")
        for problem in report.problems:
            click.echo(f"left alone: {shown(problem)}", err=True)
        if report.problems:
            ctx.exit(1)
        return
    params = P.DuplicatesParams(kinds=tuple(dict.fromkeys(kinds)) or P.DuplicatesParams.kinds, near=near,
                                similar=similar, keep=keep)
    session = Session.open(_existing(cache_dir, collection), progress=_progress(ctx))
    groups = session.duplicates(params, _engine(engine, address))
    if move_to is not None and dry_run:
        moves, _ = session.move_duplicates(groups, move_to, dry_run=True)
        _print_moves(moves, as_json, as_csv)
        _progress(ctx).note(f"would move {len(moves)} file(s) of {len(groups)} group(s) to {move_to}; nothing moved")
        return
    _print_groups(groups, as_json, as_csv)
    pictures = session.duplicates_pages(groups, png) if png is not None else []
    counts = ", ".join(f"{sum(g.kind == k for g in groups)} {k}" for k in params.kinds)
    _progress(ctx).note(f"{len(groups)} group(s): {counts}" + (f"; drawn in {', '.join(map(str, pictures))}"
                                                              if pictures else ""))
    if move_to is not None:
        moves, record = session.move_duplicates(groups, move_to)
        if record is None:
            _progress(ctx).note("nothing to move")
        else:
            _progress(ctx).note(f"moved {len(moves)} file(s) to {move_to}; put them back with: stl10sim duplicates "
                                f"--undo {record}")


def _print_groups(groups: list[Any], as_json: bool, as_csv: bool) -> None:
    if as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["group", "kind", "id", "path", "keep", "cosine", "bytes", "width", "height"])
        for number, g in enumerate(groups, start=1):
            for m, image_id in enumerate(g.ids):
                size = (g.resolutions or [None] * len(g.ids))[m] or ["", ""]
                out.writerow([number, g.kind, image_id, (g.paths or [""] * len(g.ids))[m], int(image_id == g.keep),
                              g.scores[m], (g.bytes or [""] * len(g.ids))[m] or "", *size])
        return
    for number, g in enumerate(groups, start=1):
        if as_json:
            _echo_json(g.as_json())
            continue
        members = []
        for m, image_id in enumerate(g.ids):
            facts = [shown(g.paths[m])] if g.paths else []
            if g.resolutions and g.resolutions[m]:
                facts.append("x".join(map(str, g.resolutions[m])))
            if g.bytes and g.bytes[m] is not None:
                facts.append(f"{g.bytes[m]:,} B")
            described = f"{image_id}" + (f" ({', '.join(facts)})" if facts else "")
            members.append(("keep " if image_id == g.keep else "") + described)
        click.echo(f"group {number} ({g.kind}, {len(g.ids)} images, min cosine {g.min_cosine:.4f}): "
                   + "; ".join(members))


def _print_moves(moves: list[Any], as_json: bool, as_csv: bool) -> None:
    if as_csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["id", "from", "to"])
        out.writerows([m.id, m.source, m.target] for m in moves)
        return
    for m in moves:
        if as_json:
            _echo_json({"id": m.id, "from": str(m.source), "to": str(m.target)})
        else:
            click.echo(f"{shown(str(m.source))} -> {shown(str(m.target))}")


# ---------------------------------------------------------------- import


@main.command("import")
@click.option("--features", "features", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="An (N, 1280) float32 or float16 .npy: one feature row per image (normalised on import).")
@click.option("--collection", required=True, metavar="NAME", help="The new collection's name.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An (N,) integer .npy: each row's class index, -1 for none.")
@click.option("--class-names", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file naming the classes, one per line, in label order.")
@click.option("--paths", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file with one path (or name) per row: results then carry it.")
@click.option("--weights", default=None, metavar="imagenet|none|PATH",
              help="The MobileNetV2 weights the features came from: lets `query --image` embed images like them.")
@param_option(P.ExtractParams, "image_size", default=None, show_default=False,
              help=f"The input size the features were extracted at (with --weights; default {P.ExtractParams.image_size}).")
@click.option("--force", is_flag=True, help="Replace the collection if it exists.")
@no_wait_option
@cache_dir_option
@click.pass_context
def import_(ctx: click.Context, features: Path, collection: str, labels: Path | None, class_names: Path | None,
            paths: Path | None, weights: str | None, image_size: int | None, force: bool, no_wait: bool,
            cache_dir: Path | None) -> None:
    """Make a collection from features made elsewhere (another machine, another pipeline).

    The array is memory-mapped and checked (shape, dtype, finite, no all-zero row), normalised and written
    like an extraction's features; then index, query by id, evaluate, duplicates and serve work on it as on
    any collection. It holds no images: grids and the page's pictures are not available, and `query --image`
    needs --weights (and --image-size) naming the model the features came from.
    """
    from stl10_similarity import import_features

    if collection == P.DEFAULT_COLLECTION:
        raise click.UsageError("stl10 is STL-10's own collection: import into another --collection NAME")
    if image_size is not None and weights is None:
        raise click.UsageError("--image-size describes the model of --weights: give both")
    home = _home(cache_dir, collection)
    manifest = import_features(features, home, labels=labels, class_names=class_names, paths=paths, weights=weights,
                               image_size=image_size if image_size is not None else
                               (P.ExtractParams.image_size if weights else None),
                               force=force, wait=not no_wait, progress=_progress(ctx))
    click.echo(f"imported {manifest['n']:,} feature rows into collection {collection} ({home})")


# ---------------------------------------------------------------- verify


@main.command()
@collection_option
@cache_dir_option
@click.pass_context
def verify(ctx: click.Context, collection: str, cache_dir: Path | None) -> None:
    """Hash every artifact of the collection (features and index) against its manifest.

    Other commands hash an artifact once and then trust its file stamp (size, times, inode) until the file
    changes; this one always hashes everything. One line per artifact on stdout; exit 2 if any does not match.
    """
    from stl10_similarity import verify_collection

    report = verify_collection(_existing(cache_dir, collection))
    for path, problem in report:
        click.echo(f"ok   {path}" if problem is None else f"BAD  {path}")
    bad = [problem for _, problem in report if problem is not None]
    if bad:
        for problem in bad:
            click.echo(problem, err=True)
        raise click.exceptions.Exit(2)
    _progress(ctx).note(f"{len(report)} artifact(s) match their manifests")


# ---------------------------------------------------------------- collections


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per collection (NDJSON).")
@click.option("--remove", metavar="NAME", default=None,
              help="Delete collection NAME's features and index (never its images; for stl10, not the download).")
@no_wait_option
@cache_dir_option
@click.pass_context
def collections(ctx: click.Context, as_json: bool, remove: str | None, no_wait: bool, cache_dir: Path | None) -> None:
    """List the collections in the cache dir: source, size, and whether the index is current."""
    from stl10_similarity import list_collections, remove_collection, resolve_cache_dir

    if remove is not None:
        home = remove_collection(resolve_cache_dir(cache_dir), remove, wait=not no_wait)
        _progress(ctx).note(f"removed collection {remove} ({home})")
        return
    rows = list_collections(resolve_cache_dir(cache_dir))
    for row in rows:
        if as_json:
            _echo_json(row)
        else:
            skipped = f", {row['skipped']} unreadable skipped" if row["skipped"] else ""
            click.echo(f"{row['name']:<16} {row['images']:>9,} images  index {row['index']:<8} "
                       f"{shown(row['source'])}{skipped}")
    if not rows and not as_json:
        click.echo("no collections yet: run `stl10sim extract` (STL-10) or `stl10sim extract --images DIR --collection NAME`")


# ---------------------------------------------------------------- index


def index_options(command: Any) -> Any:
    """The options of every IndexParams field (index and bench share them)."""
    options = [
        param_option(P.IndexParams, "sets", help="What the forest indexes: each image's nearest learned centroids, "
                                                  "or its top-K dimensions (the original project's sets)."),
        param_option(P.IndexParams, "centroids", help="Centroids learned for --sets centroids "
                                                       f"(default: one per {P.IMAGES_PER_CENTROID} images, "
                                                       f"{P.MIN_CENTROIDS}..{P.MAX_CENTROIDS})."),
        param_option(P.IndexParams, "set_size", help="How many nearest centroids form an image's set."),
        param_option(P.IndexParams, "top_k", help="Size of each image's top-K set: its K most activated "
                                                   "feature dimensions (shown with every result; indexed with "
                                                   "--sets top-dims)."),
        param_option(P.IndexParams, "num_perm", help="MinHash permutations."),
        param_option(P.IndexParams, "trees", help="Prefix trees in the forest (depth: num_perm / trees)."),
        param_option(P.IndexParams, "basis", help="Top-K sets from raw features, or centred / standardised per "
                                                   "dimension."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def index_params_from(kwargs: dict[str, Any]) -> P.IndexParams:
    """The IndexParams among a command's options (those ``index_options`` added), taken out of ``kwargs``."""
    from dataclasses import fields

    return P.IndexParams(**{f.name: kwargs.pop(f.name) for f in fields(P.IndexParams)})


@main.command()
@index_options
@param_option(P.ShardParams, "shards", help="Build the index as this many shards (contiguous rows, one shared "
                                            "vocabulary); queries fan out to every shard and merge, with the "
                                            "answers of one index.")
@engine_options("the shards' build")
@collection_option
@cache_dir_option
@force_option
@no_wait_option
@click.pass_context
def index(ctx: click.Context, shards: int, engine: str, address: str | None, collection: str,
          cache_dir: Path | None, force: bool, no_wait: bool, **kwargs: Any) -> None:
    """Build the sets, MinHash signatures and the LSH forest over the features.

    By default an image's set is the ids of its --set-size nearest centroids, learned by spherical
    k-means on the collection's centred features (--sets centroids); --sets top-dims uses its K largest
    feature dimensions after centring each on its collection mean (--basis). MinHash (tokens
    str(token).encode(), scheme affine32, seed 1) is bit-identical to datasketch's; the forest is a
    datasketch MinHashLSHForest(num_perm, l=trees). `query` and `evaluate` build the index with these
    defaults when it is missing: run this to choose others. --force also fits the centroids again
    (an update in place keeps them).
    """
    from stl10_similarity import build_index

    params = index_params_from(kwargs)
    runs_on = _engine(engine, address)
    if engine != "local" and shards == 1:
        raise click.UsageError("--engine ray builds the shards of --shards S (S > 1) as Ray tasks")
    result = build_index(_existing(cache_dir, collection), params, force=force, wait=not no_wait,
                         progress=_progress(ctx), shards=shards, engine=runs_on)
    if result.cached:
        state = "already built (cached; --force rebuilds)"
    else:
        how = "updated in place" if result.manifest.get("updated") else "built"
        state = f"{how} in {result.seconds:.1f} s"
    parts = f" as {shards} shards" if shards > 1 else ""
    click.echo(f"index of {result.n} images{parts} in {result.folder}: {state}")


# ---------------------------------------------------------------- query


def format_text(result: Any) -> str:
    q = result.query
    who = f"image {q.id}" if q.id is not None else f"image file {shown(q.image)}"
    who += f" ({shown(q.path)})" if q.path else ""
    label = f" (label: {shown(q.label)})" if q.label else ""
    lines = [f"Query: {who}{label}  [{result.params['method']}, {result.candidates} candidates, "
             f"{result.timing_ms['search']:.2f} ms]"]
    for m in result.results:
        where = f"  {shown(m.path)}" if m.path else ""
        lines += [
            f"  {m.rank:>3}. image {m.id} (label: {shown(m.label)}){where}",
            f"       cosine {m.cosine:.4f}   index sets: Jaccard {m.set_jaccard:.4f}, estimated Jaccard (MinHash) "
            f"{m.jaccard_estimate:.4f}",
            f"       top-{result.params['top_k']} dims: exact Jaccard {m.jaccard:.4f}   intersection {m.intersection}   "
            f"union {m.union}   unique to query {m.unique_to_query}   unique to match {m.unique_to_match}",
        ]
    return "\n".join(lines)


def _png_path(png: Path, result: Any, several: bool) -> Path:
    if not several:
        return png
    tag = result.query.id if result.query.id is not None else Path(result.query.image).stem
    return png.with_name(f"{png.stem}-{tag}{png.suffix or '.png'}")


@main.command()
@click.option("--image-id", "image_ids", type=int, multiple=True, metavar="N",
              help="Id of a collection image (0-based); repeat for several queries.")
@click.option("--image", "images", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              help="An image file not in the collection (JPEG, PNG, WebP, ...); repeat for several.")
@param_option(P.SearchParams, "k", "-k", "k", help="Results per query.")
@param_option(P.SearchParams, "method", help=f"auto: exact up to {P.SCAN_LIMIT:,} images, rerank beyond; rerank: the "
              "forest's candidates by cosine; forest: LSH forest by estimated Jaccard; exact: brute-force cosine; "
              "forest-query: datasketch's own query().")
@candidates_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query on stdout (NDJSON for several).")
@picture_option("Write a result grid; with several queries, the query id is added to the name.")
@param_option(P.ExtractParams, "device", help="Device for embedding --image files.")
@collection_option
@cache_dir_option
@click.pass_context
def query(ctx: click.Context, image_ids: tuple[int, ...], images: tuple[Path, ...], k: int, method: str,
          candidates: int, as_json: bool, png: Path | None, device: str, collection: str,
          cache_dir: Path | None) -> None:
    """Find the k images most similar to each query image.

    Methods: auto (default) scans every image (exact) while the collection is small enough for a scan to
    take a few milliseconds, and uses rerank beyond. rerank takes the forest's candidates, gathered from
    every tree at the deepest shared prefix first, keeps the best few by a 128-byte projection of each
    image (see --candidates) and orders them by exact cosine; forest orders the candidates by estimated
    Jaccard; exact is brute-force cosine over all features (the baseline); forest-query is datasketch's own
    MinHashLSHForest.query(). Never returns the query itself, never fewer than min(k, N-1) results. Builds
    the index first when it is missing or out of date (one line on stderr). Several --image-id queries are
    answered as one batch on every core. With several queries and --png grid.png, grids are grid-<id>.png.
    """
    from stl10_similarity import Session

    if not image_ids and not images:
        raise click.UsageError("give at least one --image-id N or --image PATH")
    session = Session.open(_existing(cache_dir, collection), progress=_progress(ctx))
    for image_id in image_ids:  # every query is checked before anything is written
        session.check_id(image_id)
    # the collection's images as one batch on every core; images of the user's one at a time (each is embedded)
    results = session.query_many(list(image_ids), k=k, method=method, candidates=candidates) if image_ids else []
    results += [session.query(image=path, k=k, method=method, candidates=candidates, device=device) for path in images]
    several = len(results) > 1
    for result in results:
        if png is not None:
            session.grid(result, _png_path(png, result, several))
        if as_json:
            _echo_json(result.to_dict())
        else:
            click.echo(format_text(result))
    if png is not None and not as_json and not several:
        _progress(ctx).note(f"grid written to {png}")


# ---------------------------------------------------------------- evaluate


class QueryCount(click.ParamType):
    """A positive number of queries, or ``all`` (None)."""

    name = "N|all"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value is None or value == "all":
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number nor 'all'", param, ctx)
        if number < 1:
            self.fail(f"{number} is below 1 (give a positive number or 'all')", param, ctx)
        return number


def format_report(report: Any) -> str:
    header = (f"{'method':<13} {'P@k':>6} {'mAP@k':>6} {'kNN acc':>7} {'R@k cos':>7} {'R@k jac':>7} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'cand.':>7}")
    lines = [f"{report.queries} queries over {report.n} images, k={report.k}, candidates={report.candidates}, "
             f"top_k={report.params['top_k']}, num_perm={report.params['num_perm']}, trees={report.params['trees']}, "
             f"basis={report.params['basis']}", header, "-" * len(header)]
    for m in report.methods:
        lines.append(f"{m.name:<13} {m.precision_at_k:>6.3f} {m.map_at_k:>6.3f} {m.knn_accuracy:>7.3f} "
                     f"{m.recall_vs_cosine:>7.3f} {m.recall_vs_jaccard:>7.3f} {m.p50_ms:>7.3f} {m.p99_ms:>7.3f} "
                     f"{m.mean_candidates:>7.0f}")
    return "\n".join(lines)


@main.command()
@param_option(P.EvaluateParams, "queries", type=QueryCount(), default="all", show_default=True,
              help="How many collection images to use as queries (a seeded sample), or all.")
@param_option(P.EvaluateParams, "k", "-k", "k")
@click.option("--method", "methods", type=click.Choice(P.METHODS), multiple=True,
              help=f"Methods to compare (repeat). Default: {', '.join(P.EvaluateParams.methods)}.")
@candidates_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@picture_option("Plot precision@k for k = 1..K per method.")
@collection_option
@cache_dir_option
@click.pass_context
def evaluate(ctx: click.Context, queries: int | None, k: int, methods: tuple[str, ...], candidates: int, as_json: bool,
             png: Path | None, collection: str, cache_dir: Path | None) -> None:
    """Measure retrieval quality and speed of several methods side by side.

    Every query is a collection image (itself excluded). Class quality: precision@k, mAP@k (AP@k over
    min(k, R)), leave-one-out kNN accuracy. Fidelity: recall@k against exact cosine kNN on the same
    features and against exact Jaccard on the same sets (ties at the k-th score count as hits). Cost:
    in-process p50/p99 and candidates examined per query.
    """
    from stl10_similarity import Session
    from stl10_similarity import evaluate as ev

    params = P.EvaluateParams(queries=queries, k=k, methods=methods or P.EvaluateParams.methods, candidates=candidates)
    session = Session.open(_existing(cache_dir, collection), progress=_progress(ctx))
    report = ev.evaluate(session, params, progress=_progress(ctx))
    if png is not None:
        ev.plot_precision(report, png)
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(format_report(report))


# ---------------------------------------------------------------- bench


def format_bench(report: Any) -> str:
    m, sig, forest = report.machine, report.signatures, report.forest
    p = report.params
    sets = f"{p['set_size']} nearest of {p['vocabulary']['universe']} centroids" if p["sets"] == "centroids" else \
        f"top {p['top_k']} {p['basis']} dims"
    lines = [
        f"stl10sim bench: n={report.n:,} ({p['features']} features) k={report.k} queries={report.queries} "
        f"sets: {sets}, num_perm={p['num_perm']} trees={p['trees']}",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['date']}, numpy {m['numpy']}, "
        f"datasketch {m['datasketch']}",
        f"features: {report.data_seconds:.1f} s; index (sets, signatures, trees): {sig['index_build_seconds']:.1f} s",
        f"MinHash signatures: bulk {sig['bulk_seconds_on_baseline_sets']:.3f} s vs datasketch update loop "
        f"{sig['baseline_seconds']:.2f} s on the same {sig['baseline_n']:,} sets: {sig['speedup']:.0f}x; "
        f"identical: {sig['identical_to_datasketch']}",
        f"datasketch forest of {forest['n']:,}: build {forest['build_seconds']:.1f} s, peak RSS growth "
        f"{forest['peak_rss_mb']:.0f} MB, pickle {forest['pickle_mb']:.0f} MB written in {forest['pickle_seconds']:.1f} s, "
        f"loaded in {forest['load_seconds']:.1f} s",
        f"rerank: compiled (loaded in {p['compiled_load_seconds']:.2f} s; the numpy path, which one-off queries take, "
        "is timed beside it)" if p.get("compiled") else "rerank: numpy (numba not installed, or STL10SIM_NO_COMPILED set)",
        "",
    ]
    header = (f"{'method':<46} {'build s':>8} {'B/image':>8} {'p50 ms':>8} {'p99 ms':>8} {'qps':>8} "
              f"{'batch q/s':>9} {'recall@k':>8} {'cand.':>7}")
    lines += [header, "-" * len(header)]
    for r in report.methods:
        batched = "-" if r.batched_qps is None else f"{r.batched_qps:.0f}"
        lines.append(f"{r.name:<46} {r.build_seconds:>8.1f} {r.bytes_per_image:>8.0f} {r.p50_ms:>8.3f} "
                     f"{r.p99_ms:>8.3f} {r.qps:>8.1f} {batched:>9} {r.recall_at_k:>8.3f} {r.mean_candidates:>7.0f}")
    default = "exact (numpy)" if report.n <= P.SCAN_LIMIT else f"rerank (candidates {P.SearchParams.candidates})"
    lines += ["", f"the default method (auto) at this size: {default} (exact up to {P.SCAN_LIMIT:,} images)"]
    return "\n".join(lines)


def format_extract_bench(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"stl10sim bench --stage extract: {report['n']} images at {report['image_size']} px on {report['device']}, "
             f"weights {report['weights']}",
             f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['date']}", ""]
    header = f"{'input path / precision':<30} {'batch':>5} {'img/s':>8} {'vs naive b64':>12} {'RSS MB':>8}"
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        lines.append(f"{r['name']:<30} {r['batch_size']:>5} {r['images_per_second']:>8.1f} "
                     f"{r['ratio_vs_naive_b64']:>11.2f}x {r['peak_rss_mb']:>8.0f}")
    for precision, f in report["fidelity"].items():
        lines.append(f"fidelity {precision} vs fp32: mean cosine {f['mean_cosine']:.5f}, top-K Jaccard "
                     f"{f['mean_topk_jaccard']:.4f}, top-10 overlap {f['top10_overlap']:.4f}")
    return "\n".join(lines)


@main.command()
@param_option(P.BenchParams, "stage",
              help="index: signatures, forest and queries on synthetic vectors; extract: feature extraction speed.")
@param_option(P.BenchParams, "n", "--n", "n",
              help=f"index: synthetic vectors (default {P.INDEX_BENCH_N:,}); extract: images timed per row "
                   f"(default {P.EXTRACT_BENCH_N}).")
@param_option(P.BenchParams, "k", "-k", "k")
@param_option(P.BenchParams, "queries")
@param_option(P.BenchParams, "baseline_n",
              help="Sets on which datasketch's per-image MinHash.update loop is timed against the bulk encoder.")
@index_options
@click.option("--features", "features_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="index stage: benchmark on your own (N, D) float32/float16 .npy features "
                                 "(memory-mapped, normalised) instead of synthetic ones.")
@click.option("--budget", "budgets", type=click.IntRange(min=1), multiple=True,
              help=f"Rerank candidate budgets to compare (repeat). Default: "
                   f"{', '.join(map(str, P.BenchParams.budgets))}.")
@param_option(P.BenchParams, "seed", type=int)
@click.option("--weights", default=P.ExtractParams.weights, show_default=True, metavar="imagenet|none|PATH",
              help="extract stage only.")
@param_option(P.ExtractParams, "image_size", help="extract stage only.")
@param_option(P.ExtractParams, "device", help="extract stage only.")
@data_dir_option
@cache_dir_option
@click.option("--hnsw-cache", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Build FAISS HNSW at any size (else only up to 300,000 images) and keep its graph in DIR: built "
                   "once per set of features (minutes at a million, 5.4 GB there), loaded by later runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_context
def bench(ctx: click.Context, stage: str, n: int | None, k: int, queries: int, baseline_n: int,
          features_path: Path | None, budgets: tuple[int, ...], seed: int, weights: str, image_size: int,
          device: str, data_dir: Path | None, cache_dir: Path | None, hnsw_cache: Path | None, as_json: bool,
          **kwargs: Any) -> None:
    """Benchmark indexing and querying at scale (synthetic features or --features), or extraction speed.

    index: N synthetic MobileNetV2-like vectors (or your --features); bulk signatures vs datasketch's
    MinHash.update loop, forest build/pickle/load, and per method build time, index bytes per image,
    p50/p99, queries/s and recall@k against exact cosine, side by side: exact, the index (rerank at each
    budget, forest), the previous default index (top-100 dims, 8 trees) and FAISS HNSW and IVF-Flat if
    faiss-cpu is installed. extract: images/s of a naive PIL loop against our input path at several batch
    sizes and precisions, with reduced precision's fidelity.
    """
    if features_path is not None and (stage != "index" or n is not None):
        raise click.UsageError("--features is for the index stage and replaces --n (the array's rows are used)")
    params = P.BenchParams(stage=stage, n=n, k=k, queries=queries, baseline_n=baseline_n,
                           budgets=budgets or P.BenchParams.budgets, seed=seed)
    if stage == "extract":
        from stl10_similarity import resolve_data_dir, run_extract_bench, stl10

        source = stl10.open_source(resolve_data_dir(data_dir, cache_dir), P.ExtractParams.split)
        extract_params = P.ExtractParams(weights=weights, image_size=image_size, device=device)
        result = run_extract_bench(source, extract_params, n=params.size, progress=_progress(ctx))
        click.echo(json.dumps(result) if as_json else format_extract_bench(result))
        return
    from stl10_similarity import bench_features, run_bench

    index_params = index_params_from(kwargs)
    features = None if features_path is None else bench_features(features_path)
    report = run_bench(params, index_params, features=features, hnsw_cache=hnsw_cache, progress=_progress(ctx))
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(format_bench(report))


# ---------------------------------------------------------------- serve


@main.command()
@param_option(P.ServeParams, "host", "--host", "host",
              help="Address to listen on; 127.0.0.1 keeps it to this machine (0.0.0.0 opens it to the network, "
                   "with a token).")
@param_option(P.ServeParams, "port", help="Port to listen on.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests sent to this host name (a reverse proxy's); repeatable. Others get 403.")
@click.option("--token", envvar=P.TOKEN_ENV, show_envvar=True, default=None, metavar="SECRET",
              help="Every request must carry it (Authorization: Bearer SECRET; the page: open /?token=SECRET). "
                   "Default: none on 127.0.0.1, a random one printed at start on any other --host.")
@param_option(P.ServeParams, "max_upload_mb", help="Largest request body (an uploaded image) in MB; larger: 413.")
@param_option(P.ServeParams, "max_concurrent", help="Requests worked on at once; more are answered 503 at once.")
@param_option(P.ServeParams, "max_uploads",
              help="Uploads queued for the model at once, beside --max-concurrent; more are answered 503.")
@param_option(P.ServeParams, "max_buffered_mb",
              help="Request bodies held at once, all connections together, in MB; beyond: 503.")
@param_option(P.ServeParams, "body_timeout",
              help="Seconds a request body may take to arrive; slower: 408 and the connection is closed.")
@param_option(P.ServeParams, "header_timeout",
              help="Seconds a request's headers may take to arrive; slower (or silent): the connection is closed.")
@param_option(P.ServeParams, "artifacts",
              help="copy: read the index and features into memory (safe from files changed under the server); "
                   "map: memory-map them, for collections larger than memory.")
@engine_options("searching")
@collection_option
@cache_dir_option
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, allow_hosts: tuple[str, ...], token: str | None,
          max_upload_mb: int, max_concurrent: int, max_uploads: int, max_buffered_mb: int, body_timeout: int,
          header_timeout: int, artifacts: str, engine: str, address: str | None, collection: str,
          cache_dir: Path | None) -> None:
    """Serve the collection: a JSON API (/api/v1/...) and a web page at / to browse and search it.

    Opens the index once (building it first if it is missing, like query) and answers from it until
    stopped; /api/v1/health says when a newer index exists on disk (restart to use it). Needs the serve
    extra: pip install -e '.[serve]'. Endpoints and security: docs/server.md. --engine ray keeps one Ray
    actor per shard (index --shards S), each mapping its shard once; the API and the page are the same.
    """
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401  (uploads)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise click.UsageError(f"stl10sim serve needs the serve extra ({exc.name} is missing): "
                               "pip install -e '.[serve]'") from exc
    from stl10_similarity.server import serve as run_server

    params = P.ServeParams(host=host, port=port, allow_hosts=allow_hosts, token=token, max_upload_mb=max_upload_mb,
                           max_concurrent=max_concurrent, max_uploads=max_uploads, max_buffered_mb=max_buffered_mb,
                           body_timeout=body_timeout, header_timeout=header_timeout, artifacts=artifacts)
    run_server(_existing(cache_dir, collection), params, progress=_progress(ctx), engine=_engine(engine, address))


def run() -> None:  # console-script entry point
    main(prog_name="stl10sim")


__all__ = ["main", "run"]
