"""Issue 22 §3: every file a command reads is checked on load: a missing, corrupt or foreign file is one line naming
the file, what is wrong and what to do (a UserError: exit 2), never a traceback from torch, json or OmegaConf."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from nasrun.errors import UserError
from nasrun.files import read_checkpoint, read_json, read_yaml

from .conftest import make_cfg

GARBAGE = b"\x80\x04not what it claims \xff"


def one_line(exc_info, *needles):
    text = str(exc_info.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


def test_readers_name_the_file_and_the_fault(tmp_path):
    bad, missing = tmp_path / "bad", tmp_path / "missing.json"
    bad.write_bytes(GARBAGE)
    for read in (lambda p: read_json(p, "fix it"), lambda p: read_yaml(p, "fix it"),
                 lambda p: read_checkpoint(p, (), "fix it")):
        with pytest.raises(UserError) as err:
            read(bad)
        one_line(err, str(bad), "fix it")
        with pytest.raises(UserError) as err:
            read(missing)
        one_line(err, str(missing), "does not exist")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError) as err:
        read_json(tmp_path / "list.json", "f")
    one_line(err, "holds a JSON list, not a dict")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError) as err:
        read_yaml(tmp_path / "list.yaml", "f")
    one_line(err, "holds no YAML mapping")
    assert list(read_yaml(tmp_path / "list.yaml", "f", kind="list")) == ["a", "b"]
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "list.pt", (), "f")
    one_line(err, "not a nasrun checkpoint (it holds a list)")
    torch.save({"config": {}}, tmp_path / "partial.pt")
    with pytest.raises(UserError) as err:
        read_checkpoint(tmp_path / "partial.pt", ("config", "supernet", "rng"), "f")
    one_line(err, "no supernet, rng")
    assert read_checkpoint(tmp_path / "partial.pt", ("config",), "f") == {"config": {}}


@pytest.mark.parametrize("content, needle", [(b"{not json", "is not readable JSON"),
                                             (b"[\"|nor_conv_3x3~0|\"]", "holds a JSON list"),
                                             (b"{\"space\": \"nb201\"}", "has no genotype"),
                                             (GARBAGE, "is not readable JSON")])
def test_a_genotype_file_is_checked(tmp_path, content, needle):
    from nasrun.evaluate import read_genotype_arg

    path = tmp_path / "genotype.json"
    path.write_bytes(content)
    for value in (path, tmp_path):  # the file itself, or the run directory that holds it
        with pytest.raises(UserError) as err:
            read_genotype_arg(str(value))
        one_line(err, str(path), needle)


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    from nasrun.search import run_search

    run = tmp_path_factory.mktemp("search") / "run"
    run_search(make_cfg(["trainer.epochs=1"]), run)
    return run


def select(run, out):
    from nasrun.select import run_select

    return run_select(make_cfg([f"run={run}", "selector=argmax"], config_name="select", tiny=False), out)


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_select_checks_the_search_it_reads(finished_search, tmp_path):
    run = copy_run(finished_search, tmp_path / "garbage")
    (run / "checkpoint.pt").write_bytes(GARBAGE)
    with pytest.raises(UserError) as err:
        select(run, tmp_path / "o1")
    one_line(err, "checkpoint.pt is unreadable", "run directory of a nasrun search")

    run = copy_run(finished_search, tmp_path / "no_rng")
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    del state["rng"]
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(UserError) as err:
        select(run, tmp_path / "o2")
    one_line(err, "no rng")

    run = copy_run(finished_search, tmp_path / "other_net")  # a checkpoint of another supernet than config.yaml's
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["supernet"] = {k: v[..., :1] if v.dim() else v for k, v in state["supernet"].items()}
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(UserError) as err:
        select(run, tmp_path / "o3")
    one_line(err, "does not fit the search in")

    run = copy_run(finished_search, tmp_path / "bad_config")
    (run / "config.yaml").write_text("trainer: [unclosed\n")
    with pytest.raises(UserError) as err:
        select(run, tmp_path / "o4")
    one_line(err, "config.yaml is not readable YAML")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))  # refused before the output directory exists
    assert select(finished_search, tmp_path / "ok")["genotype"]  # the untouched run still works


def test_a_resumed_search_checks_its_checkpoint(tmp_path):
    from nasrun.search import run_search

    cfg = make_cfg(["trainer.epochs=1"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(GARBAGE)
    with pytest.raises(UserError) as err:
        run_search(cfg, run)
    one_line(err, "checkpoint.pt is unreadable", "delete it to start over")
    torch.save({"config": OmegaConf.to_container(cfg, resolve=True), "epoch": 1}, run / "checkpoint.pt")
    with pytest.raises(UserError) as err:
        run_search(cfg, run)
    one_line(err, "not one of this run's kind", "no supernet, method, rng", "delete it to start over")
    torch.save({"config": OmegaConf.to_container(cfg, resolve=True), "finished": True}, run / "checkpoint.pt")
    with pytest.raises(UserError) as err:
        run_search(cfg, run)
    one_line(err, "without its summary")


def test_report_and_rerun_check_the_run_files(finished_search, tmp_path, monkeypatch, capsys):
    import sys

    from nasrun import cli
    from nasrun.report import load_run

    run = copy_run(finished_search, tmp_path / "run")
    (run / "config.yaml").write_bytes(GARBAGE)
    with pytest.raises(UserError) as err:
        load_run(run)
    one_line(err, "config.yaml is not readable YAML", "leave that folder out")

    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: search\n")
    (job / ".hydra" / "overrides.yaml").write_text("seed: 3\n")  # a mapping where Hydra writes a list
    monkeypatch.setattr(sys, "argv", ["nasrun", "rerun", str(job)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "overrides.yaml holds no YAML list" in err[0], err
    (job / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  job:\n    name: my_app\n")
    monkeypatch.setattr(sys, "argv", ["nasrun", "rerun", str(job)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "names no nasrun command" in err[-1], err


def test_a_bad_genotype_file_is_one_line_from_the_command(tmp_path):
    from .test_cli import assert_user_error, nasrun

    path = tmp_path / "genotype.json"
    path.write_text(json.dumps({"genotype": 3}))
    assert_user_error(nasrun("eval", f"genotype={path}", f"hydra.run.dir={tmp_path / 'r'}"), "has no genotype")
    assert not (tmp_path / "r").exists()
