"""tools/report.py and detector/paper/report.py on hand-made run folders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from detector.paper.curve import curve_report
from detector.paper.report import ReportError, write_report
from detector.paper.runs import find_runs

ROOT = Path(__file__).resolve().parents[3]


def focal(alpha, gamma) -> dict:
    return {"_target_": "losses.FocalLoss", "alpha": alpha, "gamma": gamma}


def write_run(
    path: Path,
    table: str,
    seed: int,
    cls_loss: dict,
    metrics: dict | None,
    criterion: dict | None = None,
    prior: float = 0.01,
    data: dict | None = None,
    max_iter: int | None = None,
) -> None:
    """A run folder as tools/train.py leaves it (only the keys the report reads)."""
    config = {
        "experiment": {"name": table},
        "train": {"seed": seed, **({"max_iter": max_iter} if max_iter else {})},
        "criterion": {"_target_": "detector.RetinaNetCriterion", "cls_loss": cls_loss,
                      **(criterion or {})},
        "model": {"anchor_generator": {"scales": [1.0, 1.26, 1.59], "ratios": [0.5, 1.0, 2.0]},
                  "head": {"prior_prob": prior}},
        **({"data": data} if data is not None else {}),
    }  # fmt: skip
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text("unresolved: ${oops}\n")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def ap(ap: float, ap50: float, ap75: float) -> dict:
    return {"AP": ap, "AP50": ap50, "AP75": ap75, "APs": 1.0, "APm": 2.0, "APl": -1.0,
            "per_class_AP": {"circle": ap}, "iteration": 10}  # fmt: skip


OHEM = "detector.paper.ohem.OHEMCriterion"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    write_run(root / "1a/0", "table1a", 0, focal(0.25, 0.0), ap(10.0, 20.0, 9.0))
    write_run(root / "1a/1", "table1a", 1, focal(0.25, 0.0), ap(12.0, 23.0, 10.0))
    write_run(root / "1a/2", "table1a", 0, focal(0.75, 0.0), ap(30.0, 50.0, 31.0))
    write_run(root / "1a/3", "table1a", 1, focal(0.75, 0.0), {"diverged": True, "error": "nan"})
    write_run(root / "1a/4", "table1a", 0, focal(0.999, 0.0), None)
    write_run(root / "1a/5", "table1a", 0, focal(0.1, 0.0), ap(0.0, 0.0, 0.0))
    write_run(root / "1b/0", "table1b", 0, focal(0.25, 2.0), ap(34.5, 55.25, 36.0))
    write_run(root / "1b/1", "table1b", 0, focal(0.75, 0.1), ap(31.0, 51.0, 32.0))
    ce = focal(None, 0.0)
    write_run(root / "1d/0", "table1d", 0, focal(0.25, 2.0), ap(36.0, 55.0, 38.0))
    write_run(root / "1d/1", "table1d", 0, ce, ap(31.0, 48.0, 33.0),
              {"_target_": OHEM, "batch_size_per_image": 256, "nms_thresh": 0.5,
               "fg_fraction": 0.25})  # fmt: skip
    write_run(root / "1d/2", "table1d", 0, ce, ap(32.0, 50.0, 35.0),
              {"_target_": OHEM, "batch_size_per_image": 128, "nms_thresh": 0.5,
               "fg_fraction": None})  # fmt: skip
    write_run(root / "np/0", "no_prior", 0, focal(0.75, 0.0), {"diverged": True}, prior=0.5)
    write_run(root / "np/1", "no_prior", 0, focal(0.75, 0.0), ap(29.0, 47.0, 30.0))
    # A run of no experiment (plain tools/train.py) is not part of any table.
    other = root / "plain"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump({"train": {"seed": 0}, "criterion": {
        "_target_": "detector.RetinaNetCriterion", "cls_loss": focal(0.25, 2.0)},
        "model": {"anchor_generator": {"ratios": [1.0]}, "head": {}}}))  # fmt: skip
    return root


def section(report: str, title: str) -> list[str]:
    """The table lines under ``## title``."""
    lines = report.splitlines()
    start = lines.index(f"## {title}") + 2
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def test_tables_in_the_papers_layout(runs: Path, tmp_path: Path) -> None:
    report = write_report(runs, tmp_path / "out").read_text()
    assert section(report, "Table 1a: α-balanced CE (γ = 0) over α") == [
        "| α | γ | AP | AP50 | AP75 | paper AP | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        "| 0.1 | 0 | 0.0 | 0.0 | 0.0 | 0.0 | 1 |",
        "| 0.25 | 0 | 11.0 ± 1.4 | 21.5 ± 2.1 | 9.5 ± 0.7 | 10.8 | 2 |",
        "| 0.75 | 0 | 30.0 | 50.0 | 31.0 | 31.1 | 1 (+1 diverged) |",
        "| 0.999 | 0 | — | — | — | 25.1 | 0 (+1 missing) |",
    ]
    assert section(report, "Table 1b: focal loss over (γ, α)") == [
        "| γ | α | AP | AP50 | AP75 | paper AP | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        "| 0.1 | 0.75 | 31.0 | 51.0 | 32.0 | 31.4 | 1 |",
        "| 2 | 0.25 | 34.5 | 55.2 | 36.0 | 34.0 | 1 |",
    ]
    assert section(report, "Table 1d: OHEM with CE against FL") == [
        "| method | batch size | nms thr | AP | AP50 | AP75 | runs |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        "| OHEM | 128 | 0.5 | 32.0 | 50.0 | 35.0 | 1 |",
        "| OHEM 1:3 | 256 | 0.5 | 31.0 | 48.0 | 33.0 | 1 |",
        "| FL | n/a | n/a | 36.0 | 55.0 | 38.0 | 1 |",
    ]
    title = "§4.1: classification prior π at initialisation (π = 0.5: bias 0, no prior)"
    assert section(report, title)[2:] == [
        "| CE α=0.75 | 0.01 | 29.0 | 47.0 | 30.0 | 1 |",
        "| CE α=0.75 | 0.5 | — | — | — | 0 (+1 diverged) |",
    ]
    assert "Table 1c" not in report  # no runs, no table
    out = tmp_path / "out"
    assert (out / "table1a_ap_vs_alpha.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "table1b_ap_vs_gamma.png").read_bytes()[:4] == b"\x89PNG"
    # One HParams session per finished run, named by its folder.
    sessions = {p.parent.relative_to(out / "tensorboard").as_posix()
                for p in (out / "tensorboard").rglob("events.out.tfevents.*")}  # fmt: skip
    assert {"1a/0", "1a/1", "1a/2", "1a/5", "1b/0", "1d/2", "np/1"} <= sessions
    assert "1a/3" not in sessions and "1a/4" not in sessions


def test_hparams_are_readable(runs: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_report(runs, tmp_path / "out")
    acc = EventAccumulator(str(tmp_path / "out" / "tensorboard" / "1a" / "1"))
    acc.Reload()
    assert acc.Scalars("hparam/AP")[0].value == 12.0
    assert "_hparams_/session_start_info" in acc.summary_metadata


def test_cli(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "report.py"), f"runs={runs}", f"out={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| 0.25 | 0 | 11.0 ± 1.4 |" in done.stdout
    assert (out / "report.md").is_file()
    bad = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "report.py"), f"runs={tmp_path / 'nope'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"focaldet: {tmp_path / 'nope'}: no such directory"
    for args in ([], [f"runs={runs}", f"curve_csv={tmp_path / 'a.csv'}"]):
        both = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "report.py"), *args],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert both.returncode == 2
        assert both.stderr == (
            "focaldet: config error: give either runs=DIR (training runs) or "
            "curve_csv=[FILE,...] (runs tables of the imbalance curve)\n"
        )


def test_unreadable_runs_are_named(tmp_path: Path) -> None:
    write_run(tmp_path / "r", "table1a", 0, focal(0.25, 0.0), {"AP": 1.0})
    with pytest.raises(ReportError, match=r"r/metrics.json: no numeric AP50, AP75, APs"):
        find_runs(tmp_path)
    (tmp_path / "r" / "metrics.json").write_text("{")
    with pytest.raises(ReportError, match=r"r/metrics.json: invalid JSON"):
        find_runs(tmp_path)
    (tmp_path / "r" / "config.yaml").write_text("train: {}\n")
    with pytest.raises(ReportError, match=r"r/config.yaml: not a training config"):
        find_runs(tmp_path)
    (tmp_path / "r" / "config.yaml").unlink()
    (tmp_path / "r" / "config.yaml").symlink_to(tmp_path / "gone.yaml")  # a dangling link
    with pytest.raises(ReportError, match=r"r/config.yaml: cannot be read \(No such file"):
        find_runs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no run folders"):
        write_report(tmp_path / "empty", tmp_path / "o")


def test_runs_linked_in_are_found_once(runs: Path, tmp_path: Path) -> None:
    gathered = tmp_path / "gathered"
    gathered.mkdir()
    (gathered / "machine_a").symlink_to(runs / "1a")
    (gathered / "machine_a_again").symlink_to(runs / "1a")
    (gathered / "machine_b").symlink_to(runs / "1b")
    (runs / "1b" / "loop").symlink_to(gathered)  # a link loop ends, it does not hang
    found = [run.path.relative_to(gathered) for run in find_runs(gathered)]
    assert found == [Path("machine_a", str(i)) for i in range(6)] + [
        Path("machine_b/0"),
        Path("machine_b/1"),
    ]


def test_each_dataset_gets_its_own_tables(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    synthetic = {"root": "datasets/synthetic", "val": {"ann_file": "x/instances_val.json"}}
    photos = {"val": {"ann_file": "data/raccoon_val.json"}}  # no root: the annotation file
    write_run(root / "a", "table1b", 0, focal(0.25, 2.0), ap(60.0, 80.0, 70.0), data=synthetic)
    write_run(root / "b", "table1b", 0, focal(0.25, 2.0), ap(20.0, 50.0, 10.0), data=photos)
    write_run(root / "c", "table1b", 1, focal(0.25, 2.0), ap(22.0, 52.0, 12.0), data=photos)
    report = write_report(root, tmp_path / "out").read_text()
    title = "Table 1b: focal loss over (γ, α)"
    assert section(report, f"{title}, on `datasets/synthetic`")[2:] == [
        "| 2 | 0.25 | 60.0 | 80.0 | 70.0 | 34.0 | 1 |"
    ]
    assert section(report, f"{title}, on `data/raccoon_val.json`")[2:] == [
        "| 2 | 0.25 | 21.0 ± 1.4 | 51.0 ± 1.4 | 11.0 ± 1.4 | 34.0 | 2 |"
    ]
    plots = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert plots == ["raccoon_val_table1b_ap_vs_gamma.png", "synthetic_table1b_ap_vs_gamma.png"]


def test_each_schedule_gets_its_own_tables(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    write_run(root / "a", "table1a", 0, focal(0.75, 0.0), ap(60.0, 80.0, 70.0), max_iter=400)
    write_run(root / "b", "table1a", 0, focal(0.75, 0.0), ap(64.0, 84.0, 74.0), max_iter=1200)
    report = write_report(root, tmp_path / "out").read_text()
    title = "Table 1a: α-balanced CE (γ = 0) over α"
    assert section(report, f"{title}, 400 iterations")[2:] == [
        "| 0.75 | 0 | 60.0 | 80.0 | 70.0 | 31.1 | 1 |"
    ]
    assert section(report, f"{title}, 1200 iterations")[2:] == [
        "| 0.75 | 0 | 64.0 | 84.0 | 74.0 | 31.1 | 1 |"
    ]
    plots = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert plots == ["1200it_table1a_ap_vs_alpha.png", "400it_table1a_ap_vs_alpha.png"]


def test_runs_that_the_table_cannot_tell_apart_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    write_run(root / "clip", "no_prior", 0, focal(0.75, 0.0), ap(60.0, 80.0, 70.0))
    write_run(root / "noclip", "no_prior", 0, focal(0.75, 0.0), ap(50.0, 70.0, 60.0))
    message = (
        f"{root / 'clip'} and {root / 'noclip'} fill the same row of no_prior with the same seed 0"
    )
    with pytest.raises(ReportError, match=message):
        write_report(root, tmp_path / "out")


def test_each_row_gets_the_imbalance_meter_reading_of_its_data(tmp_path: Path) -> None:
    """A run folder as tools/train.py writes it on generated data: the report's neg:pos column is
    the meter's ratio of that data (measured independently here), with each row's α applied."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from data.synthetic import ensure_synthetic
    from detector.engine.config import register_resolvers
    from detector.paper.imbalance import ce_loss_ratio, sum_counts
    from detector.paper.meter import config_counts

    data = tmp_path / "synthetic"
    ensure_synthetic(data, seed=0, num_train=4, num_val=2, absent_classes=3)
    register_resolvers()
    runs = tmp_path / "runs"
    for alpha, folder in ((0.25, "a"), (0.75, "b")):
        overrides = [f"data.root={data}", "data.generate.num_train=4", "data.generate.num_val=2",
                     "data.generate.absent_classes=3", "+experiment=table1a", "loss=ce",
                     f"loss.alpha={alpha}", "train.seed=0"]  # fmt: skip
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        OmegaConf.update(cfg, "model.head.num_classes", 8, merge=False)
        (runs / folder).mkdir(parents=True)
        OmegaConf.save(cfg, runs / folder / "config.yaml", resolve=True)
        (runs / folder / "metrics.json").write_text(json.dumps(ap(50.0, 70.0, 40.0)))
    counts, num_classes = config_counts(cfg, 4)
    assert num_classes == 8  # 5 real + 3 absent
    ratio = ce_loss_ratio(sum_counts(counts))  # the mean image's ratio is the total's
    report = write_report(runs, tmp_path / "out", meter_images=4).read_text()
    table = section(report, "Table 1a: α-balanced CE (γ = 0) over α")
    assert table[0] == "| α | γ | AP | AP50 | AP75 | paper AP | neg:pos | runs |"
    assert table[2].split(" | ")[6] == f"{ratio * 3:,.1f}"  # α = .25: × 3
    assert table[3].split(" | ")[6] == f"{ratio / 3:,.1f}"  # α = .75: × 1/3
    assert "The paper's setting reads 271.2 without α, 813.7 at α = .25." in report
    off = write_report(runs, tmp_path / "off", meter_images=0).read_text()
    assert "neg:pos" not in off and "Imbalance meter: not measured: turned off" in off


def test_runs_whose_data_cannot_be_rebuilt_say_why(runs: Path, tmp_path: Path) -> None:
    report = write_report(runs, tmp_path / "out").read_text()
    assert "neg:pos" not in report
    # The first row of the first table is α = .1 (run 1a/5); its config has no data node.
    line = f"Imbalance meter: not measured: {runs / '1a/5/config.yaml'}: Missing key data"
    assert line in report.splitlines()


def test_the_imbalance_curve_is_ap_against_the_meter_reading(tmp_path: Path) -> None:
    """Runs of +experiment=imbalance_curve on two settings of the dial: one table row per
    setting, ordered by the meter's reading of its data (no α; measured independently here),
    AP mean ± std over seeds per loss, and the plot."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from data.synthetic import ensure_synthetic
    from detector.engine.config import register_resolvers
    from detector.paper.imbalance import ce_loss_ratio, sum_counts
    from detector.paper.meter import config_counts

    register_resolvers()
    runs, ratios = tmp_path / "runs", {}
    losses = {"{gamma:2.0,alpha:0.25}": 40.0, "{gamma:0.0,alpha:0.25}": 20.0,
              "{gamma:0.0,alpha:0.75}": 30.0}  # fmt: skip
    for absent in (6, 0):  # the more imbalanced first: the table sorts by the reading
        data = tmp_path / f"synthetic{absent}"
        ensure_synthetic(data, seed=0, num_train=4, num_val=2, absent_classes=absent)
        for (loss, base), seed in ((item, s) for item in losses.items() for s in (0, 1)):
            overrides = [
                f"data.root={data}", "data.generate.num_train=4", "data.generate.num_val=2",
                f"data.generate.absent_classes={absent}", "+experiment=imbalance_curve",
                f"loss={loss}", f"train.seed={seed}",
            ]  # fmt: skip
            with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                cfg = compose(config_name="train", overrides=overrides)
            OmegaConf.update(cfg, "model.head.num_classes", 5 + absent, merge=False)
            folder = runs / f"a{absent}_{loss}_{seed}"
            folder.mkdir(parents=True)
            OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
            result = ap(base + absent + 2 * seed, 70.0, 40.0)
            (folder / "metrics.json").write_text(json.dumps(result))
            if seed == 0:
                ratios[absent] = ce_loss_ratio(sum_counts(config_counts(cfg, 4)[0]))
    assert ratios[0] < ratios[6]
    report = write_report(runs, tmp_path / "out", meter_images=4).read_text()
    table = section(report, "The imbalance curve: AP against the imbalance")
    assert table[0] == (
        "| data | neg:pos (no α) | AP, CE α=0.25 | AP, CE α=0.75 | AP, FL γ=2 α=0.25 | runs |"
    )
    # AP base + absent + 2·seed over seeds 0, 1: mean base + absent + 1, std √2.
    assert table[2] == (
        f"| `{tmp_path / 'synthetic0'}` | {ratios[0]:,.1f} | 21.0 ± 1.4 | 31.0 ± 1.4 "
        "| 41.0 ± 1.4 | 2, 2, 2 |"
    )
    assert table[3] == (
        f"| `{tmp_path / 'synthetic6'}` | {ratios[6]:,.1f} | 27.0 ± 1.4 | 37.0 ± 1.4 "
        "| 47.0 ± 1.4 | 2, 2, 2 |"
    )
    assert "![AP against the imbalance](imbalance_curve.png)" in report
    assert (tmp_path / "out" / "imbalance_curve.png").stat().st_size > 0

    # Every run in the runs table; seed 0 and seed 1 split into two tables (two machines, say)
    # and pooled again give the same curve, with the readings the report measured.
    lines = (tmp_path / "out" / "imbalance_curve_runs.csv").read_text().splitlines()
    assert lines[0] == "data,ratio,gamma,alpha,seed,AP,AP50,AP75,status"
    assert len(lines) == 1 + 12
    assert (
        lines[1] == f"{tmp_path / 'synthetic0'},{ratios[0]:.1f},0.0,0.25,0,20.0,70.0,40.0,finished"
    )
    by_seed = {
        seed: [lines[0]] + [x for x in lines[1:] if x.split(",")[4] == seed] for seed in "01"
    }
    tables = []
    for seed, rows in by_seed.items():
        tables.append(tmp_path / f"seed{seed}.csv")
        tables[-1].write_text("\n".join(rows) + "\n")
    pooled = curve_report(tables, tmp_path / "pooled").read_text()
    assert section(pooled, "The imbalance curve: AP against the imbalance") == table
    assert (tmp_path / "pooled" / "imbalance_curve.png").stat().st_size > 0


CSV_HEADER = "data,ratio,gamma,alpha,seed,AP,AP50,AP75,status"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["data,AP"], "not a runs table: the columns must be " + CSV_HEADER),
        ([CSV_HEADER, "d,4.6,0.0,0.25,zero,50,70,40,finished"],
         "line 2: invalid literal for int() with base 10: 'zero'"),
        ([CSV_HEADER, "d,4.6,0.0,0.25,0,50,70,40,done"],
         "line 2: status must be finished, diverged or missing, got 'done'"),
        ([CSV_HEADER, "d,4.6,0.0,0.25,0,50,70,40,finished", "d,5.0,2.0,0.25,0,50,70,40,finished"],
         "line 3: d reads 5.0 here and 4.6 on an earlier line"),
    ],
)  # fmt: skip
def test_a_bad_runs_table_is_named_with_its_line(lines, message, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError) as error:
        curve_report([path], tmp_path / "out")
    assert str(error.value) == (f"{path}: {message}" if message.startswith("not") else
                                f"{path}, {message}")  # fmt: skip


def test_a_runs_table_with_a_seed_twice_is_refused(tmp_path: Path) -> None:
    row = "d,4.6,2.0,0.25,0,50,70,40,finished"
    tables = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for path in tables:
        path.write_text(f"{CSV_HEADER}\n{row}\n")
    with pytest.raises(ReportError, match="fill the same row of b.csv with the same seed 0"):
        curve_report(tables, tmp_path / "out")
    diverged = tmp_path / "c.csv"
    diverged.write_text(f"{CSV_HEADER}\n{row}\nd,4.6,0.0,0.25,0,,,,diverged\n")
    report = curve_report([diverged], tmp_path / "out").read_text()
    assert section(report, "The imbalance curve: AP against the imbalance")[2] == (
        "| `d` | 4.6 | — | 50.0 | 0 (+1 diverged), 1 |"
    )


def write_evaluations(run: Path, aps: dict[int, float]) -> None:
    """A results.csv as training writes it: log rows without AP, evaluation rows with it."""
    lines = ["iteration,loss/total,val/AP,val/AP50"]
    for iteration in range(100, max(aps, default=200) + 1, 100):
        ap_cell = f"{aps[iteration]},{aps[iteration] + 20}" if iteration in aps else ","
        lines.append(f"{iteration},1.5,{ap_cell}")
    (run / "results.csv").write_text("\n".join(lines) + "\n")


def test_the_schedule_study_is_ap_against_iterations(tmp_path: Path) -> None:
    """Runs of +experiment=paper_schedule: one row per loss (CE first), AP mean ± std over the
    seeds at each evaluated iteration; a diverged run has no line; other runs beside them keep
    their tables and titles."""
    runs = tmp_path / "runs"
    curves = {
        ("fl", 0): {200: 10.0, 400: 30.0}, ("fl", 1): {200: 14.0, 400: 34.0},
        ("ce", 0): {200: 20.0, 400: 25.0}, ("ce", 1): {200: 22.0, 400: 27.0},
    }  # fmt: skip
    for (loss, seed), aps in curves.items():
        run = runs / f"{loss}{seed}"
        cls_loss = focal(0.75, 2.0 if loss == "fl" else 0.0)
        write_run(run, "paper_schedule", seed, cls_loss, ap(aps[400], 0.0, 0.0), max_iter=400)
        write_evaluations(run, aps)
    write_run(runs / "ce2", "paper_schedule", 2, focal(0.75, 0.0), {"diverged": True}, max_iter=400)
    write_run(runs / "t1a", "table1a", 0, focal(0.25, 0.0), ap(10.0, 20.0, 9.0), max_iter=200)
    report = write_report(runs, tmp_path / "out", meter_images=0).read_text()
    assert section(report, "The schedule: AP against iterations") == [
        "| loss | AP at 200 | AP at 400 | runs |",
        "|---|---:|---:|---:|",
        "| CE α=0.75 | 21.0 ± 1.4 | 26.0 ± 1.4 | 2 (+1 diverged) |",
        "| FL γ=2 α=0.75 | 12.0 ± 2.8 | 32.0 ± 2.8 | 2 |",
    ]
    assert "![The schedule: AP against iterations](schedule_ap_vs_iteration.png)" in report
    assert (tmp_path / "out" / "schedule_ap_vs_iteration.png").stat().st_size > 0
    # The schedule's runs do not make the tables' schedules differ.
    assert "## Table 1a: α-balanced CE (γ = 0) over α" in report


def test_a_schedule_run_without_evaluations_is_named(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_run(runs / "a", "paper_schedule", 0, focal(0.75, 0.0), ap(1.0, 2.0, 3.0), max_iter=400)
    with pytest.raises(ReportError, match=r"a/results.csv: missing"):
        write_report(runs, tmp_path / "out", meter_images=0)
    write_evaluations(runs / "a", {})
    with pytest.raises(ReportError, match=r"a/results.csv: no evaluation"):
        write_report(runs, tmp_path / "out", meter_images=0)
