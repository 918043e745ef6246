"""The encoder-shrink CLI: demo end to end, convert, and clean errors."""

from __future__ import annotations

import json

import pytest

from encoder_shrink import ShrunkT5EncoderModel
from encoder_shrink.cli import main
from tests.test_reference import write_reference_checkpoint


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path / "demo"), "--families", "flux-dev", "pixart-sigma"]) == 0
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["families"]) == {"flux-dev", "pixart-sigma"}
    for figures in results["families"].values():
        assert figures["reload_identical"] and figures["images_finite"]
        assert figures["student_class_after_reload"] == "ShrunkT5EncoderModel"
        assert figures["student_parameters"] < figures["teacher_parameters"]
    assert (tmp_path / "demo" / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| flux-dev | text_encoder_2 |" in (tmp_path / "demo" / "report.md").read_text()
    assert "| pixart-sigma | text_encoder |" in capsys.readouterr().out


def test_convert_reference_checkpoint(tmp_path, capsys):
    write_reference_checkpoint(tmp_path / "ref")
    assert main(["convert", str(tmp_path / "ref"), "--output", str(tmp_path / "student")]) == 0
    assert "teacher_dim=64" in capsys.readouterr().out
    assert json.loads((tmp_path / "student" / "config.json").read_text())["model_type"] == "shrunk_t5"
    ShrunkT5EncoderModel.from_pretrained(tmp_path / "student")
    # a second conversion into the same non-empty folder is refused in one line
    assert main(["convert", str(tmp_path / "ref"), "--output", str(tmp_path / "student")]) == 2
    err = capsys.readouterr().err
    assert "exists and is not empty" in err and err.count("\n") == 1


def test_convert_refuses_pickle_only_folder(tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "config.json").write_text(json.dumps({"model_type": "t5", "project_in_dim": 512}))
    (tmp_path / "ref" / "pytorch_model.bin").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "ref"), "--output", str(tmp_path / "out")]) == 2
    assert "holds only pickle weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_subcommand_exits_with_usage():
    with pytest.raises(SystemExit) as exit_info:
        main(["distil"])
    assert exit_info.value.code == 2
