"""`llava-avc eval pope --image-folder DIR` with no question file: the packaged coco_pope_random is used, the run
records it, and `llava-avc score` then checks every question was answered and sets the paper's row beside it,
with no data path anywhere (a tiny random checkpoint of whichever backend this profile has)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava_avc.eval.questions import DATA_DIR, load_pope
from llava_avc.interfaces.cli import main


@pytest.fixture
def checkpoint(request):
    name = "tiny_llava_dir" if importlib.util.find_spec("llava") is not None else "tiny_hf_dir"
    return request.getfixturevalue(name)


def test_eval_without_a_question_file_uses_the_packaged_set_and_scores_strictly(tmp_path, checkpoint, sample_image,
                                                                               capsys):
    first = load_pope("coco_pope_random")[:3]
    images = tmp_path / "val2014"
    images.mkdir()
    assert len({question.image for question in first}) == 1  # the first 6 questions share one image
    sample_image.save(images / first[0].image)
    out = tmp_path / "run"
    code = main(["eval", "pope", "--model-path", str(checkpoint), "--image-folder", str(images), "--out", str(out),
                 "--method", "avc", "--limit", "3", "--max-new-tokens", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    run = json.loads((out / "run.json").read_text())
    assert Path(run["question_file"]) == DATA_DIR / "pope" / "coco_pope_random.json.gz"
    assert f"3 questions from {DATA_DIR / 'pope' / 'coco_pope_random.json.gz'} ->" in captured.out
    assert main(["score", "pope", "--answers-file", str(out), "--strict", "--reference", "avisc-paper"]) == 0
    printed = capsys.readouterr().out
    assert "answers: 3 scored, every one of the 3 questions answered" in printed
    assert "AvisC row" in printed and "random accuracy" in printed and "87.93" in printed
