"""Every file under conf/ composes and builds; every experiment preset runs one tiny step (timm-style matrix)."""

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from nasrun.cli import CONF_DIR, GROUPS
from nasrun.config import build
from nasrun.errors import UserError
from nasrun.retrain import Protocol
from nasrun.search import run_search

from .conftest import make_cfg, tiny_space

CHOICES = [(g, p.stem) for g in GROUPS if g != "experiment" for p in sorted((CONF_DIR / g).glob("*.yaml"))]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("group, choice", CHOICES)
def test_every_group_option_composes(group, choice):
    extra, config_name = (["genotype=DARTS_V2"], "eval") if group == "retrain" else ([], "search")
    cfg = make_cfg([f"{group}={choice}", *extra], config_name=config_name, tiny=False)
    assert OmegaConf.select(cfg, group) is not None
    if group in ("space", "selector", "retrain"):
        obj = build(cfg[group]) if group != "retrain" else Protocol(**cfg.retrain)
        assert obj.name == choice
    if group == "method":
        space = build(make_cfg(tiny=True).space)
        assert build(cfg.method, supernet=space.build_supernet(10), space=space).name == choice


@pytest.mark.parametrize("config_name", ["search", "eval", "select"])
def test_primary_configs_compose(config_name):
    extra = {"eval": ["genotype=x"], "select": ["run=x"]}.get(config_name, [])
    cfg = make_cfg(extra, config_name=config_name, tiny=False)
    assert cfg.task_name == config_name


@pytest.mark.slow  # about 3 minutes for every preset: `make test-slow` (in CI)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_a_tiny_step(experiment, tmp_path):
    full = make_cfg([f"+experiment={experiment}"], tiny=False)
    small_pt = ["selector.proj_intv=1", "selector.max_valid_batches=1"] if full.selector.name == "pt" else []
    if full.space.get("search_auxiliary"):  # the tower pools 5×5 after two reductions: 32-px images
        small_pt.append("dataset.synthetic.image_size=32")
    size = tiny_space(full.space.name)
    if full.method.get("stage_epochs"):  # progressive (DrNAS): one epoch per stage, a width every K divides
        n = len(full.method.stage_epochs)
        size = [*size, f"space.C={math.lcm(4, *full.method.stage_partial_channels)}", f"trainer.epochs={n}",
                f"method.stage_epochs=[{','.join(['1'] * n)}]"]
    cfg = make_cfg([f"+experiment={experiment}", "trainer.epochs=1", "trainer.batch_size=16", *size,
                    "dataset=synthetic", "trainer.device=cpu", "trainer.progress=false", "benchmark=none", *small_pt],
                   tiny=False)
    summary = run_search(cfg, tmp_path)
    assert Path(summary["run_dir"], "genotype.json").exists()


def test_strict_configs_reject_unknown_keys():
    cfg = make_cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.method.typo_lr = 1.0
    space = build(cfg.space)
    with pytest.raises(UserError, match="typo_lr"):
        build(cfg.method, supernet=space.build_supernet(10), space=space)


def test_untrusted_target_refused():
    with pytest.raises(UserError, match="refusing _target_"):
        build({"_target_": "os.system", "command": "true"})


def test_build_passes_runtime_objects():
    space = build(make_cfg().space)
    method = build(make_cfg().method, supernet=space.build_supernet(10), space=space)
    assert isinstance(method.alphas["normal"], torch.nn.Parameter)


@pytest.mark.parametrize("launcher, target", [("slurm", "SlurmLauncher"), ("local", "LocalLauncher"),
                                              ("parallel", "JoblibLauncher")])
def test_launcher_presets_compose(launcher, target):
    from hydra import compose, initialize_config_dir

    from nasrun.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="search", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.max_num_timeout > 0 and cfg.hydra.launcher.signal_delay_s > 0


def test_table_scripts_are_valid_bash_and_name_existing_presets():
    import re
    import subprocess

    scripts = sorted((Path(__file__).parents[1] / "scripts" / "tables").glob("*.sh"))
    assert len(scripts) >= 7
    for script in scripts:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
        text = script.read_text()
        if script.name.startswith("_"):  # the shared helper, sourced by the others
            continue
        assert "nasrun report" in text and "_common.sh" in text and "exit $STATUS" in text, script
        for value in re.findall(r"\+experiment=([\w,]+)", text):
            assert set(value.split(",")) <= set(EXPERIMENTS), (script, value)


def test_sp_darts_table5_sweeps_four_temperatures_and_picks_by_the_monitor(tmp_path):
    """One sweep per dataset (4 spaces × 4 t_sp each, every job a valid SP-DARTS config), then the picks' retrain step
    (nothing finished here: it says so and the script exits 1), the picks' report and the paper's report."""
    import itertools
    import os
    import subprocess
    import sys

    shim = tmp_path / "bin" / "nasrun"
    shim.parent.mkdir()
    shim.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$LOG.$(ls "$LOG".* 2>/dev/null | wc -l)"\n')
    shim.chmod(0o755)
    python = shim.parent / "python"  # the retrain step's helper (nasrun.plan) runs for real
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    script = Path(__file__).parents[1] / "scripts" / "tables" / "sp_darts_table5.sh"
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "LOG": str(tmp_path / "call"), "OUT": "o"}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "o/search/c10 does not exist" in proc.stderr, proc.stderr
    calls = [(tmp_path / f"call.{i}").read_text().splitlines() for i in range(5)]
    assert not (tmp_path / "call.5").exists()
    searches, (picks, paper) = calls[:3], calls[3:]
    assert picks == ["report", "o/search", "--protocol", "best-of-n", "--pool", "method.t_sp", "--select-by",
                     "supernet monitor", "-o", "o/picks"]
    assert paper[:2] == ["report", "o/retrain"] and paper[2] == "--paper" and paper[3].endswith("sp_darts_table5.yaml")
    for search, dataset in zip(searches, ("cifar10", "cifar100", "svhn")):
        assert search[:2] == ["search", "-m"]
        sweep = dict(a.split("=", 1) for a in search[2:] if not a.startswith("hydra."))
        assert sweep["method.t_sp"].split(",") == ["4e-4", "5e-4", "6e-4", "7e-4"] and sweep["dataset"] == dataset
        combos = list(itertools.product(*[[f"{k}={v}" for v in vals.split(",")] for k, vals in sweep.items()]))
        assert len(combos) == 4 * 4
        for combo in combos[::5]:
            cfg = make_cfg(list(combo), tiny=False)
            assert cfg.method.name == "sp_darts" and cfg.space.name.startswith("darts_s") and cfg.method.w_double_softmax


def test_site_settings_apply_to_their_launcher_only(tmp_path):
    """A site folder (``--config-dir``) with local/default.yaml (Slurm by default) and local/slurm.yaml (partition,
    account): Slurm sweeps get the site values, and every other launcher still composes without them."""
    from hydra import compose, initialize_config_dir

    from nasrun.cli import CONF_DIR

    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text("# @package _global_\ndefaults:\n  - override /hydra/launcher: slurm\n")
    (tmp_path / "local" / "slurm.yaml").write_text("partition: gpu\naccount: mylab\ntimeout_min: 1440\n")
    site = f"hydra.searchpath=[file://{tmp_path}]"
    for launcher, target in [(None, "SlurmLauncher"), ("parallel", "JoblibLauncher"), ("local", "LocalLauncher"),
                             ("basic", "BasicLauncher")]:
        overrides = [site] + ([f"hydra/launcher={launcher}"] if launcher else [])
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="search", overrides=overrides, return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target), launcher
        if target == "SlurmLauncher":
            assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.account, cfg.hydra.launcher.timeout_min) == \
                ("gpu", "mylab", 1440)
        else:
            assert "partition" not in cfg.hydra.launcher


def test_table_scripts_pass_the_launcher_on_survive_failures_and_detach(tmp_path):
    """ss_darts_table4.sh with a search sweep that fails after one of its two runs finished (two genotypes): the
    finished run's genotypes are still retrained (as one sweep, on the launcher given, in its space and dataset), the
    report still runs, and the script exits 1; DETACH=1 returns at once and the same steps finish in the background."""
    import os
    import subprocess
    import sys
    import time

    shim = tmp_path / "bin" / "nasrun"
    shim.parent.mkdir()
    shim.write_text("""#!/usr/bin/env bash
printf "%s\\\\n" "$@" > "$LOG.$(ls "$LOG".* 2>/dev/null | wc -l)"
if [ "$1" = search ]; then
    for a in "$@"; do case "$a" in hydra.sweep.dir=*) d="${a#hydra.sweep.dir=}";; esac; done
    mkdir -p "$d/0/genotypes" "$d/1"
    printf "task_name: search\\nspace:\\n  name: darts_7op\\ndataset:\\n  name: cifar10\\n" > "$d/0/config.yaml"
    cp "$d/0/config.yaml" "$d/1/config.yaml"
    echo '{"genotype": "x"}' > "$d/0/genotype.json"
    echo '{}' > "$d/0/summary.json"
    touch "$d/0/genotypes/sep_conv_3x3.json" "$d/0/genotypes/dil_conv_5x5.json" "$d/1/env.json"
    exit 1
fi
""")
    shim.chmod(0o755)
    python = shim.parent / "python"  # the retrain step's helper (nasrun.plan) runs for real
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    script = Path(__file__).parents[1] / "scripts" / "tables" / "ss_darts_table4.sh"
    for detach in ("", "1"):
        out, log = tmp_path / f"out{detach}", tmp_path / f"call{detach}"
        env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "LOG": str(log), "OUT": str(out),
               "DETACH": detach}
        proc = subprocess.run(["bash", str(script), "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "seed=3"],
                              env=env, capture_output=True, text=True, timeout=60)
        if detach:
            assert proc.returncode == 0 and "running in the background" in proc.stdout
            deadline = time.time() + 30
            while not Path(f"{log}.2").exists() and time.time() < deadline:
                time.sleep(0.1)
        else:
            assert proc.returncode == 1, proc.stderr
        search, retrain, report = (Path(f"{log}.{i}").read_text().splitlines() for i in range(3))
        launch = {"hydra/launcher=slurm", "hydra.launcher.partition=gpu"}
        assert search[:2] == ["search", "-m"] and launch | {"seed=3"} <= set(search)
        assert retrain[:2] == ["eval", "-m"] and {"hydra/launcher=slurm", "hydra.launcher.partition=gpu"} <= set(retrain)
        assert "seed=3" not in retrain and {"space=darts_7op", "dataset=cifar10", "retrain=darts"} <= set(retrain)
        genotypes = next(a for a in retrain if a.startswith("genotype=")).removeprefix("genotype=").split(",")
        assert sorted(Path(g).name for g in genotypes) == ["dil_conv_5x5.json", "sep_conv_3x3.json"]
        assert report[:3] == ["report", str(out), "--paper"] and report[3].endswith("ss_darts_table4.yaml")


def test_every_key_of_every_group_is_type_and_range_checked():
    """Issue 22 §3: every key of every option of every config group (and of the commands' own files) refuses a value
    of the wrong type, and every numeric key an out-of-range one, in one line naming the key (validate is what the
    command line runs before Hydra creates a directory)."""
    import math

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nasrun.config import CHOICES, CONF_DIR, COUNTS, _expected_types, _leaves, validate
    from nasrun.errors import UserError

    wrong = {bool: "maybe", int: "abc", float: "abc", str: [1, 2], list: "abc"}
    checked, ranged = set(), set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = [("search", [f"{g}={p.stem}"]) for g in ("space", "method", "selector", "stop", "dataset", "benchmark")
                   for p in sorted((CONF_DIR / g).glob("*.yaml"))]
        configs += [("eval", [f"retrain={p.stem}", "genotype=DARTS_V2"]) for p in sorted((CONF_DIR / "retrain").glob("*.yaml"))]
        configs += [("select", ["run=x"])]
        for command, overrides in configs:
            cfg = compose(config_name=command, overrides=overrides)
            validate(cfg)  # the defaults pass
            expected = _expected_types(cfg, command)
            for key, _ in _leaves(OmegaConf.to_container(cfg, resolve=True)):
                if key in checked or key == "task_name" or not (key in CHOICES or expected.get(key)):
                    continue
                kind = str if key in CHOICES else next(k for k in (bool, int, float, list, str) if k in expected[key])
                bad = "no such choice" if key in CHOICES else wrong[kind]
                broken = cfg.copy()
                OmegaConf.update(broken, key, bad, merge=False)
                with pytest.raises(UserError) as err:
                    validate(broken)
                assert str(err.value).startswith(f"{key}=") and "\\n" not in str(err.value), (key, str(err.value))
                checked.add(key)
                if kind in (int, float) and key not in CHOICES:
                    leaf = key.rpartition(".")[2]
                    for low in ([0] if leaf in COUNTS else []) + [-1] + ([math.nan, math.inf] if kind is float else []):
                        broken = cfg.copy()
                        OmegaConf.update(broken, key, low, merge=False)
                        with pytest.raises(UserError) as err:
                            validate(broken)
                        assert str(err.value).startswith(f"{key}="), (key, str(err.value))
                    ranged.add(key)
    assert len(checked) > 150 and len(ranged) > 60, (len(checked), len(ranged))
    assert {"seed", "trainer.epochs", "method.w_lr", "method.arch_lr", "space.C", "trainer.device",
            "trainer.threads", "dataset.train_portion", "retrain.drop_path"} <= checked
