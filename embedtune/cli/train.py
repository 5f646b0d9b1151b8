"""`embedtune train`: a Hydra app over conf/. Every run a sweep asks for is composed and validated
before Hydra creates any folder, so a typo or a bad value costs one line and writes nothing."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from embedtune.cli.common import fail, quiet_transformers
from embedtune.errors import EmbedtuneError

HYDRA_FLAGS_WITHOUT_VALUE = {"-m", "--multirun"}
MAX_PREVALIDATED_SWEEP = 64
# The optional Hydra plugins (pip install 'embedtune[sweeps]') and the config groups they add.
PLUGIN_GROUPS = {"hydra/sweeper": "hydra-optuna-sweeper", "hydra/launcher": "hydra-submitit-launcher"}
# What an Optuna search does unless the command line says otherwise: maximise what each run
# returns (its held-out headline metric, `sweep_objective`), with a sampler seeded like the runs.
OPTUNA_DEFAULTS = {"hydra.sweeper.direction": "maximize", "hydra.sweeper.sampler.seed": "${seed}"}


def parse_overrides(args: list[str]):
    """Hydra's parsed overrides, or None when the arguments hold Hydra flags we do not
    interpret (--cfg, --info, ...), which Hydra then handles alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [arg for arg in args if arg not in HYDRA_FLAGS_WITHOUT_VALUE]
    if any(arg.startswith("-") for arg in overrides):
        return None
    return OverridesParser.create().parse_overrides(overrides)


def _values_to_check(override) -> list[str]:
    """The values of one override that are composed and validated before Hydra runs: every value
    of a list or range, both ends of an interval (a searching sweeper draws between them, so a
    bad end, like a temperature of 0, is a bad search), or the one value given."""
    if override.is_interval_sweep():
        interval = override.value()
        return [str(interval.start), str(interval.end)]
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def _single_runs(parsed) -> list[list[str]]:
    """Each combination of the sweeps' values to check, as plain overrides (the first 64)."""
    choices = [[f"{override.get_key_element()}={value}" for value in _values_to_check(override)] for override in parsed]
    combinations = itertools.islice(itertools.product(*choices), MAX_PREVALIDATED_SWEEP)
    return [list(combination) for combination in combinations]


def _chosen(parsed) -> dict[str, str]:
    """The plain (not swept) overrides: key or group -> value."""
    return {override.key_or_group: override.get_value_element_as_str() for override in parsed if not override.is_sweep_override()}


def check_search(parsed, sweep: bool) -> None:
    """An interval (``interval(0.01,0.2)``) is a space to search, not values to list: it needs
    ``-m`` and a searching sweeper (Hydra's grid sweeper would stop with a traceback)."""
    intervals = [override for override in parsed if override.is_interval_sweep()]
    if intervals and not (sweep and _chosen(parsed).get("hydra/sweeper", "basic") != "basic"):
        fail(
            "train",
            f"{intervals[0].input_line} is a range to search: run it with -m hydra/sweeper=optuna (pip install 'embedtune[sweeps]')",
        )


def _search_defaults(parsed) -> list[str]:
    """`OPTUNA_DEFAULTS` the command line does not set, as Hydra overrides, when it picks Optuna."""
    chosen = _chosen(parsed)
    if chosen.get("hydra/sweeper") != "optuna":
        return []
    return [f"{key}={value}" for key, value in OPTUNA_DEFAULTS.items() if key not in chosen]


def _name_sweep_runs_by_swept_keys(parsed) -> str:
    """A Hydra override that leaves only the swept keys in each sweep run's folder name
    (``0_loss.temperature=0.02``), not every path and setting given on the command line."""
    fixed = ["output_dir", "run_name"] + [o.key_or_group for o in parsed if not o.is_sweep_override()]
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(set(fixed)))}]"


def check_overrides(parsed, sweep: bool = False) -> list:
    """Compose and validate the config for every run the arguments ask for, before Hydra
    creates any folder, so a typo, a bad value or an output folder that holds an earlier run
    costs one clear line and writes nothing. Returns the composed configs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from embedtune.console import launch_rank
    from embedtune.training.config import config_dir, validate

    configs = []
    for overrides in _single_runs(parsed):
        try:
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                cfg = compose("train", overrides=overrides)
        except Exception as error:  # ConfigCompositionException and friends
            fail("train", _hydra_message(error) + _plugin_hint(overrides))
        finally:
            GlobalHydra.instance().clear()
        try:
            validate(cfg)
            if sweep and cfg.hub.repo_id is not None:
                raise EmbedtuneError(
                    f"hub.repo_id={cfg.hub.repo_id} in a sweep would upload every run to one repository: sweep without it, "
                    f"then upload the best run's final/ (`hf upload {cfg.hub.repo_id} <sweep folder>/<run>/final`)"
                )
            if launch_rank() == 0:  # under `accelerate launch` rank 0 alone owns the folder; the others may start late
                check_output_folder(cfg, sweep)
        except EmbedtuneError as error:
            fail("train", str(error))
        configs.append(cfg)
    return configs


def check_output_folder(cfg, sweep: bool) -> None:
    """The run's folder (a sweep's: ``output_dir``-sweep) can be a writable folder, and holds no
    earlier run unless ``overwrite=true`` or ``resume`` says to replace or continue it."""
    from embedtune.fileio import check_output
    from embedtune.training.outputs import run_outputs, sweep_runs

    folder = Path(f"{cfg.output_dir}-sweep" if sweep else cfg.output_dir)
    check_output(folder, "output_dir", folder=True, overwrite=True)
    if cfg.overwrite or cfg.resume is not None:
        return
    held = sweep_runs(folder) if sweep else run_outputs(folder)
    if held:
        what = (
            f"the runs {', '.join(held[:3])}{', ...' if len(held) > 3 else ''} of an earlier sweep"
            if sweep
            else f"an earlier run ({', '.join(held)})"
        )
        raise EmbedtuneError(
            f"output_dir {folder} holds {what}: pass overwrite=true to replace it, resume=auto to continue it, or another output_dir="
        )


def _plugin_hint(overrides: list[str]) -> str:
    """Where a sweeper or launcher option failed to compose: the optional plugin it may need."""
    groups = {override.split("=", 1)[0] for override in overrides} & set(PLUGIN_GROUPS)
    return "".join(
        f" (hydra/{group.split('/')[1]} options come with {PLUGIN_GROUPS[group]}: pip install 'embedtune[sweeps]')"
        for group in sorted(groups)
    )


def _hydra_message(error: Exception) -> str:
    """Hydra's multi-line composition errors, folded to one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        reason = str(cause).splitlines()[0].strip()
        if not any(reason in line for line in lines):
            lines.append(f"({reason})")
    message = " ".join(lines).split(" Config search path:")[0]  # drop Hydra's search-path dump
    return message or type(error).__name__


def main(args: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from embedtune.training.config import config_dir

    try:
        parsed = parse_overrides(args)
    except Exception as error:  # hydra's OverrideParseException
        fail("train", f"cannot parse overrides: {str(error).splitlines()[0]}")
    sweep = bool(HYDRA_FLAGS_WITHOUT_VALUE.intersection(args))
    new_folder = None  # a single run's output_dir that this command creates: removed again if the run fails before writing to it
    if parsed is not None:
        check_search(parsed, sweep)
        configs = check_overrides(parsed, sweep)
        if sweep:
            args = [*args, _name_sweep_runs_by_swept_keys(parsed), *_search_defaults(parsed)]
        elif not Path(configs[0].output_dir).exists():
            new_folder = Path(configs[0].output_dir)

    from embedtune.console import launch_rank

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
    def hydra_train(cfg) -> float | None:
        from embedtune.eval.tasks import sweep_objective
        from embedtune.training.distributed import join_submitit_tasks
        from embedtune.training.run import run

        join_submitit_tasks()
        try:
            result = run(cfg, HydraConfig.get().runtime.output_dir)
        except EmbedtuneError as error:
            if new_folder is not None and new_folder.is_dir() and not any(new_folder.iterdir()) and launch_rank() == 0:
                new_folder.rmdir()
            fail("train", str(error))
        except KeyboardInterrupt:  # train.run saved a resumable state and said where
            raise SystemExit(130) from None
        return sweep_objective(result["after"])  # what a sweeper maximises, as `report` ranks

    quiet_transformers()
    sys.argv = ["embedtune train", *args]
    hydra_train()
