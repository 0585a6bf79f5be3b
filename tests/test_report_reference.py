"""`kdforge report --reference cifar100`: the published table joins the groups it names, and only those."""

import json
from pathlib import Path

import pytest

from kdforge.cli import main
from kdforge.report import write_report
from kdforge.report.reference import load_reference


def _run(root: Path, name: str, seed: int, student: str, top1: float, teacher: str | None = None,
         losses: dict | None = None, dataset: str = "cifar100") -> None:
    folder = root / f"{name}-seed{seed}"
    folder.mkdir(parents=True)
    summary = {"name": f"{name}-seed{seed}", "seed": seed, "student": student, "dataset": dataset,
               "losses": losses or {"ce": 1.0}, "params": 1000, "macs": 5000, "steps": 10, "top1_last": top1,
               "top1_best": top1 + 0.5, "teacher_model": teacher, "teacher": "t.pt" if teacher else None}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for seed, (t, a, kd, dkd, crd_kd) in enumerate([(72.0, 69.0, 70.5, 71.5, 71.0), (72.4, 69.4, 70.9, 71.9, 71.2)]):
        _run(root, "teacher-resnet56", seed, "resnet56", t)
        _run(root, "alone-resnet20", seed, "resnet20", a)
        _run(root, "kd", seed, "resnet20", kd, "resnet56", {"ce": 0.1, "kd": 0.9})
        _run(root, "dkd", seed, "resnet20", dkd, "resnet56", {"ce": 1.0, "dkd": 1.0})
        _run(root, "crd-kd", seed, "resnet20", crd_kd, "resnet56", {"ce": 1.0, "kd": 1.0, "crd": 0.8})  # no such row
        _run(root, "kd-vgg", seed, "vgg8", 70.0, "resnet56", {"ce": 0.1, "kd": 0.9})  # a pair not in the table
        _run(root, "fashion-kd", seed, "resnet20", 90.0, "resnet56", {"ce": 0.1, "kd": 0.9}, dataset="fashion_mnist")
    return root


def test_published_numbers_join_the_matching_groups(runs, tmp_path):
    result = write_report([runs], out=tmp_path / "report", reference="cifar100")
    table = load_reference("cifar100")
    published = {(r["teacher"], r["student"], r["method"]): r for r in table["rows"]}
    joined = {(r["label"], r["pair"]): r for r in result["references"]}
    assert set(joined) == {("teacher-resnet56", "resnet56 -> resnet20"), ("alone-resnet20", "resnet56 -> resnet20"),
                           ("kd", "resnet56 -> resnet20"), ("dkd", "resnet56 -> resnet20")}
    kd = joined[("kd", "resnet56 -> resnet20")]
    assert kd["published"] == published[("resnet56", "resnet20", "kd")]["top1"] == 70.66
    assert kd["ours"][0] == pytest.approx((70.5 + 70.9) / 2) and kd["n"] == 2
    assert kd["difference"] == pytest.approx((70.5 + 70.9) / 2 - 70.66)
    assert (kd["source"], kd["epoch"]) == ("repdistiller", "last")
    dkd = joined[("dkd", "resnet56 -> resnet20")]
    assert (dkd["published"], dkd["source"], dkd["epoch"], dkd["runs"]) == (71.97, "mdistiller", "best", "mean of 5")
    assert joined[("teacher-resnet56", "resnet56 -> resnet20")]["published"] == 72.34
    assert joined[("alone-resnet20", "resnet56 -> resnet20")]["published"] == 69.06
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Published CIFAR-100 top-1 (%) beside ours" in text and "mdistiller README" in text
    assert "RepDistiller README" in text and "reviewkd" not in text.split("beside ours")[1]  # only the sources used
    assert json.loads((tmp_path / "report" / "report.json").read_text())["reference"] == "cifar100"
    page = (tmp_path / "report" / "report.html").read_text()
    assert "beside ours (<code>--reference cifar100</code>)" in page and "<td>dkd</td>" in page
    assert '<td class="num">71.97</td>' in page and "mean of 5" in page


def test_every_published_row_names_a_known_source_and_a_zoo_model():
    from kdforge.models import model_info

    table = load_reference("cifar100")
    assert len(table["rows"]) == 4 * 8 and len({(r["teacher"], r["student"], r["method"]) for r in table["rows"]}) == 32
    for row in table["rows"]:
        assert row["source"] in table["sources"] and 60 < row["top1"] < 80
        model_info(row["teacher"]), model_info(row["student"])  # raise for a name the zoo does not have
    for source in table["sources"].values():
        assert {"cite", "epoch", "runs", "notes"} <= set(source)


def test_cli_prints_the_join_and_refuses_an_unknown_reference(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--out", str(tmp_path / "r"), "--reference", "cifar100"]) == 0
    out = capsys.readouterr().out
    assert "published (cifar100) beside ours" in out and "| kd | resnet56 -> resnet20 |" in out
    assert main(["report", str(runs), "--out", str(tmp_path / "r2"), "--reference", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "--reference 'imagenet'" in err and "cifar100" in err and err.count("\n") == 1
