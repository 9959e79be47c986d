"""After `pip install`, the benchmark data ship inside the package: the wheel holds them (with licences and the
reference results), and an installed copy reads a POPE set by name, AMBER's data and the paper's numbers
from a folder that has no data of its own."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "llava_avc" / "eval" / "data"


def test_the_wheel_holds_the_data_and_an_installed_copy_reads_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(ROOT)], check=True, capture_output=True, text=True)
    wheel = next((tmp_path / "wheel").glob("llava_avc-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"llava_avc/eval/data/{path.relative_to(DATA).as_posix()}"
                for path in DATA.rglob("*") if path.is_file()}
    assert expected <= names, sorted(expected - names)
    assert {"llava_avc/eval/data/pope/LICENSE", "llava_avc/eval/data/amber/LICENSE",
            "llava_avc/eval/data/references/avisc-paper.json", "llava_avc/eval/data/README.md"} <= names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    code = ("import llava_avc.eval.questions as q, llava_avc.eval.score_amber as a, llava_avc.eval.references as r; "
            "print(q.__file__); print(len(q.load_pope('gqa_pope_seem_adversarial')), len(q.load_amber('query_all')), "
            "len(a.load_references().annotations), r.published(r.load_reference('avisc-paper'), 'mme', 'avc')"
            "['existence'][0])")
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env={"PYTHONPATH": str(target), "PATH": ""},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, counts = proc.stdout.strip().splitlines()
    assert where.startswith(str(target))
    # 3,000 POPE questions, 15,220 AMBER queries and annotations; the paper's AvisC MME existence score
    assert counts.split() == ["3000", "15220", "15220", "189.29"]
    assert gzip.decompress((target / "llava_avc/eval/data/pope/coco_pope_random.json.gz").read_bytes()).count(b"\n") \
        == 3000
