"""Config mistakes through the installed command: exit 2, one `textclf: error` on stderr naming the key (and the
nearest valid name), no traceback, nothing written. The processes run concurrently, once for the module."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import describe, run_textclf

# name -> (arguments, text the error must contain)
CASES = {
    "wrong_type": (["train", "optimizer.lr=fast"], "optimizer.lr: must be a number, got 'fast'"),
    "wrong_type_trainer": (["train", "trainer.epochs=two"], "trainer.epochs: must be an integer >= 1, got 'two'"),
    "out_of_range": (["train", "trainer.epochs=0"], "trainer.epochs: must be an integer >= 1, got 0"),
    "unknown_option": (["train", "loss=focall"], "loss=focall: no such option; did you mean loss=focal?"),
    "unknown_key": (["train", "trainer.epochz=1"], "trainer.epochz: unknown key; did you mean trainer.epochs?"),
    "added_unknown_key": (["train", "+trainer.foo=1"], "trainer.foo: unknown key"),
    "typo_in_a_yaml_file": (["validate", "--config-dir", "myconf", "data=mine"],
                            "data.text_colum: unknown key; did you mean data.text_col?"),
    "predict_unknown_key": (["predict", "run_dir=r", "input=i", "devic=cpu"],
                            "devic: unknown key; did you mean device?"),
    "cfg_job_unknown_option": (["train", "--cfg", "job", "pooling=meen"], "pooling=meen: no such option; did you mean "
                                                                          "pooling=mean?"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("config_errors")

    def run(name):
        cwd = root / name
        (cwd / "myconf" / "data").mkdir(parents=True)
        (cwd / "myconf" / "data" / "mine.yaml").write_text("defaults:\n  - csv\n  - _self_\ntrain_file: x.csv\n"
                                                           "text_colum: review\n")
        return cwd, run_textclf(CASES[name][0], cwd, timeout=120)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(run, CASES)))


@pytest.mark.parametrize("case", list(CASES))
def test_a_config_mistake_is_one_message(results, case):
    cwd, (rc, out, err) = results[case]
    shown = describe((rc, out, err))
    assert rc == 2, shown
    assert "Traceback" not in out + err, shown
    assert (out + err).count("textclf: error") == 1 and err.startswith("textclf: error: "), shown
    assert CASES[case][1] in err, shown
    assert sorted(p.name for p in cwd.iterdir()) == ["myconf"], "a refused command writes nothing"
