"""The TiUE ablation script: arms as recipe overrides, trained, scored as `demo --tiue`, resumable."""

from __future__ import annotations

import json

import pytest

from encoder_shrink.errors import InvalidArgumentError
from encoder_shrink.toy.tiue_ablation import agreement, arm_overrides, main
from tests.doctests import run_docstring_examples


def test_arms_and_the_agreement_of_the_summary_figures_with_the_checker():
    assert arm_overrides("today") == {}
    assert arm_overrides("rank64+ttur5") == {"lora_rank": 64, "lora_alpha": 64, "fake_updates": 5}
    with pytest.raises(InvalidArgumentError, match="unknown ablation arm 'ttur9' in 'today\\+ttur9'"):
        arm_overrides("today+ttur9")
    rows = [{"k": 4, "energy_distance": d, "student_score": score, "accuracy": {"overall": a},
             "diversity": {"position": spread}}
            for d, score, a, spread in ((0.1, 0.5, 0.6, 2.0), (0.2, 0.9, 0.8, 1.5), (0.3, 0.7, 0.7, 1.0))]
    # a K alone has no ranking
    rows.append({"k": 1, "energy_distance": 0.5, "accuracy": {"overall": 0.5}, "diversity": {"position": 1.0}})
    # the distance ranks them 1, 2, 3, the checker 3, 1, 2 and the spread 1, 2, 3; the summary's score ranks them as
    # the checker does
    assert agreement(rows) == {"energy_distance": {"k4": {"accuracy": -0.5, "spread": 1.0}},
                               "student_score": {"k4": {"accuracy": 1.0, "spread": -0.5}}}
    import encoder_shrink.toy.tiue_ablation

    assert run_docstring_examples(encoder_shrink.toy.tiue_ablation) >= 1


@pytest.mark.slow
def test_the_ablation_trains_each_arm_to_one_budget_scores_it_and_resumes(tmp_path, capsys):
    out = tmp_path / "ablation"
    # (the distiller's own distance on 1 prompt x 2 images x 2 steps: the run's cost is its evaluations)
    args = ["--output", str(out), "--arms", "today", "ttur5+guidance2", "--ks", "1", "--max-steps", "2",
            "--eval-prompts", "4", "--seeds", "2", "--set", "eval_prompt_count", "1", "--set",
            "eval_images_per_prompt", "2", "--set", "eval_steps", "2"]
    main(args)
    results = json.loads((out / "results.json").read_text())
    rows = {r["arm"]: r for r in results["rows"]}
    assert set(rows) == {"today", "ttur5+guidance2"}
    # every arm on the paper's recipe (toy-tiue ships with regress+ttur5: the baseline turns both off)
    common = {"num_steps": 1, "timestep_spacing": "trailing", "eval_prompt_count": 1, "eval_images_per_prompt": 2,
              "eval_steps": 2, "max_steps": 2}
    assert rows["today"]["overrides"] == {"fake_updates": 1, "regression_weight": 0.0, **common}
    assert rows["ttur5+guidance2"]["overrides"] == {"fake_updates": 5, "regression_weight": 0.0,
                                                    "distill_guidance_scale": 2.0, **common}
    for row in rows.values():
        assert row["steps"] == 2 and row["k"] == 1 and 0 <= row["accuracy"]["overall"] <= 1
        assert row["diversity"]["position_prompts"] <= 4 and row["unet_flops"] > 0
        # the training summary's figures beside the checker's: latent and image distances, the recipe's metric
        assert row["energy_distance"] > 0 and row["image_energy_distance"] > 0 and 0 <= row["student_score"] <= 1
    assert set(results["agreement"]) >= {"energy_distance", "image_energy_distance", "student_score"}
    teacher = results["teacher"]["teacher 25 steps"]
    assert teacher["unet_flops"] > 10 * rows["today"]["unet_flops"]  # 25 steps with CFG against one pass
    assert "today K=1 seed 0" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 0
    assert "Rank agreement" in capsys.readouterr().out
    # resumable: a second call trains and scores nothing again
    kept = {f.name: f.read_text() for f in (out / "runs").glob("*.json")}
    main(args)
    assert {f.name: f.read_text() for f in (out / "runs").glob("*.json")} == kept
    # rows scored before the summary's held-out measure changed (here: marked as read on another set, figures gone)
    # are measured again from the students their runs saved, as the runs' own summaries measured them
    measured = {"prompts": 1, "images_per_prompt": 2, "teacher_steps": 2, "guidance_scale": 3.0, "resolution": 32,
                "metric": "checker"}
    rows = {}
    for name, other in (("today-k1-s0", {"prompts": 8, "images_per_prompt": 4}), ("ttur5+guidance2-k1-s0",
                                                                                  {**measured, "teacher_steps": 25})):
        stale = out / "runs" / f"{name}.json"
        rows[name] = json.loads(stale.read_text())
        assert rows[name]["summary_eval"] == measured
        stale.write_text(json.dumps({**{k: v for k, v in rows[name].items()
                                        if k not in ("energy_distance", "student_score")}, "summary_eval": other}))
    main(args)
    for name, row in rows.items():
        again = json.loads((out / "runs" / f"{name}.json").read_text())
        assert again.pop("summary_remeasured") is True and again.keys() == row.keys()
        assert again["summary_eval"] == measured
        for figure in ("energy_distance", "image_energy_distance", "student_score"):
            assert again[figure] == pytest.approx(row[figure], rel=1e-5, abs=1e-6), (name, figure)
    # another budget in the same folder would mix budgets: refused in one line
    with pytest.raises(InvalidArgumentError, match="holds an ablation with settings"):
        main([*args[:-1], "3"])
    with pytest.raises(InvalidArgumentError, match="seed is set per run"):
        main(["--output", str(tmp_path / "other"), "--set", "seed", "3"])
