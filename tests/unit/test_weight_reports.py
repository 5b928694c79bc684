"""What a weights load reports instead of hiding.

- The backbone (model.name_or_path): weights the checkpoint lacks start random, and transformers' own notice of
  it is silenced; textclf warns, naming them grouped (encoder.layer.1.*), and refuses a folder whose weights
  mostly do not fit its architecture. A missing pooler is only a note unless pooling=pooler uses it.
- model.init_from: the key comparison by name and shape (loaded / missing / unexpected / mismatched, with both
  shapes), prefix mapping (HF `bert.`, a bare backbone, DDP `module.`), and the refusal of a pickle that
  torch.load(weights_only=True) will not read.
"""
from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import model_node
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from textclf.errors import TextclfError
from textclf.models.classifier import build_classifier
from textclf.models.init_from import InitFrom, compare_keys, group_names, resolve_init_from

POOLING = {"_target_": "textclf.models.pooling.MeanPooling"}
HEAD = {"_target_": "textclf.models.heads.ClassificationHead"}


def variant(tiny_bert: Path, folder: Path, edit) -> Path:
    """A copy of the tiny BERT folder whose model.safetensors is edit(state dict)."""
    shutil.copytree(tiny_bert, folder)
    state = load_file(str(tiny_bert / "model.safetensors"))
    save_file(edit(state), str(folder / "model.safetensors"))
    return folder


def build(folder, pooling=POOLING, num_labels=3, **model):
    torch.manual_seed(0)
    return build_classifier(model_node(model), OmegaConf.create(pooling), OmegaConf.create(HEAD), num_labels,
                            name_or_path=str(folder))


def warnings_of(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ----------------------------------------------------------------------------- the backbone's loading report
def test_a_complete_checkpoint_loads_without_a_warning(tiny_bert, caplog):
    caplog.set_level(logging.INFO)
    build(tiny_bert)
    assert warnings_of(caplog) == ""


def test_weights_missing_from_the_checkpoint_are_named_grouped(tiny_bert, tmp_path, caplog):
    folder = variant(tiny_bert, tmp_path / "no_layer_1",
                     lambda sd: {k: v for k, v in sd.items() if ".layer.1." not in k})
    caplog.set_level(logging.INFO)
    model = build(folder)
    text = warnings_of(caplog)
    assert "16 of 39 backbone weights" in text and "start random" in text, text
    assert "encoder.layer.1.*" in text and str(folder) in text, text
    assert "encoder.layer.1.attention" not in text, "names are grouped, not listed one by one"
    # what loaded is the checkpoint's; what did not is not
    state = load_file(str(tiny_bert / "model.safetensors"))
    torch.testing.assert_close(model.backbone.encoder.layer[0].output.dense.weight,
                               state["encoder.layer.0.output.dense.weight"])


def test_a_checkpoint_of_other_names_is_refused(tiny_bert, tmp_path):
    folder = variant(tiny_bert, tmp_path / "renamed", lambda sd: {f"model.{k}": v for k, v in sd.items()})
    with pytest.raises(TextclfError) as e:
        build(folder)
    message = str(e.value)
    assert str(folder) in message and "39 of 39" in message and "start random" in message, message
    assert "model.embeddings.*" in message, "the checkpoint's own (unused) names are shown: " + message
    assert "\n" not in message


def test_a_shape_mismatch_is_reported_with_both_shapes(tiny_bert, tmp_path, caplog):
    def shorter_positions(sd):
        sd = dict(sd)
        sd["embeddings.position_embeddings.weight"] = sd["embeddings.position_embeddings.weight"][:64].clone()
        return sd

    folder = variant(tiny_bert, tmp_path / "positions", shorter_positions)
    caplog.set_level(logging.INFO)
    build(folder)  # transformers alone raises a RuntimeError here
    text = warnings_of(caplog)
    assert "embeddings.position_embeddings.weight" in text and "[64, 32]" in text and "[128, 32]" in text, text


def test_unused_checkpoint_weights_are_a_note(tiny_bert, tmp_path, caplog):
    def with_mlm_head(sd):
        return {**sd, "cls.predictions.bias": torch.zeros(7),
                "cls.predictions.transform.dense.weight": torch.zeros(3, 3)}

    folder = variant(tiny_bert, tmp_path / "mlm", with_mlm_head)
    caplog.set_level(logging.INFO)
    build(folder)
    assert warnings_of(caplog) == ""
    notes = "\n".join(r.getMessage() for r in caplog.records)
    assert "2 checkpoint weights" in notes and "cls.predictions.*" in notes, notes


def test_a_checkpoint_without_a_pooler_is_a_note_unless_pooling_uses_it(tiny_bert, tmp_path, caplog):
    folder = variant(tiny_bert, tmp_path / "no_pooler", lambda sd: {k: v for k, v in sd.items()
                                                                    if not k.startswith("pooler.")})
    caplog.set_level(logging.INFO)
    build(folder)
    assert warnings_of(caplog) == ""
    assert any("pooler" in r.getMessage() for r in caplog.records)
    caplog.clear()
    build(folder, pooling={"_target_": "textclf.models.pooling.PoolerPooling"})
    text = warnings_of(caplog)
    assert "pooling=pooler" in text and "pooler.dense.*" in text, text


def test_the_embedded_minilm_loads_completely(caplog):
    from transformers import AutoModel

    from textclf.models.backbone import resolve_name_or_path

    _, info = AutoModel.from_pretrained(resolve_name_or_path("embedded:minilm"), output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info  # it has its pooler weights too


def test_group_names_collapses_layers_and_runs():
    names = [f"encoder.layer.{i}.{p}" for i in range(12) for p in ("attention.w", "output.b")]
    assert group_names(names + ["pooler.dense.weight", "pooler.dense.bias", "head.weight"]) == \
        "encoder.layer.0-11.* (24), pooler.dense.* (2), head.weight"
    assert group_names([f"encoder.layer.{i}.x" for i in (0, 1, 5)]) == "encoder.layer.0-1.* (2), encoder.layer.5.x"


# ----------------------------------------------------------------------------- init_from: the key comparison
def shapes(**named):
    return {k.replace("__", "."): tuple(v) for k, v in named.items()}


def test_compare_keys_sorts_every_key_into_one_of_four():
    model = shapes(backbone__a=(4, 2), backbone__b=(4,), head__weight=(2, 4), head__bias=(2,), pooling__q=(4,))
    file = {"backbone.a": torch.zeros(4, 2), "backbone.b": torch.zeros(4), "head.weight": torch.zeros(3, 4),
            "head.bias": torch.zeros(3), "extra.thing": torch.zeros(1)}
    cmp = compare_keys(model, file)
    assert cmp.loaded == ["backbone.a", "backbone.b"]
    assert cmp.missing == ["pooling.q"]
    assert cmp.unexpected == ["extra.thing"]
    assert cmp.mismatched == [{"name": "head.bias", "model_shape": [2], "file_shape": [3]},
                              {"name": "head.weight", "model_shape": [2, 4], "file_shape": [3, 4]}]
    assert cmp.mapped == []


@pytest.mark.parametrize("prefix,mapped", [("", ("", "backbone.")), ("bert.", ("bert.", "backbone.")),
                                           ("module.backbone.", ("module.", "")),
                                           ("_orig_mod.backbone.", ("_orig_mod.", ""))])
def test_compare_keys_maps_a_prefix_difference(prefix, mapped):
    """A bare backbone (HF AutoModel), an HF task model (bert.*), a DDP- or torch.compile-wrapped state dict."""
    model = shapes(backbone__embeddings__w=(5, 2), backbone__encoder__layer__0__w=(2, 2), head__weight=(2, 2))
    file = {f"{prefix}embeddings.w": torch.zeros(5, 2), f"{prefix}encoder.layer.0.w": torch.zeros(2, 2),
            "classifier.weight": torch.zeros(2, 2)}
    cmp = compare_keys(model, file)
    assert cmp.loaded == ["backbone.embeddings.w", "backbone.encoder.layer.0.w"]
    assert cmp.unexpected == ["classifier.weight"] and cmp.missing == ["head.weight"]
    assert cmp.mapped == [{"from": mapped[0], "to": mapped[1], "count": 2}]
    assert cmp.sources["backbone.embeddings.w"] == f"{prefix}embeddings.w"


def test_compare_keys_without_a_common_name():
    cmp = compare_keys(shapes(backbone__a=(2,)), {"x.y": torch.zeros(2)})
    assert cmp.loaded == [] and cmp.unexpected == ["x.y"] and cmp.missing == ["backbone.a"]


# ----------------------------------------------------------------------------- init_from: the sources
def test_a_pickle_that_weights_only_refuses_is_a_clear_error(tmp_path):
    marker = tmp_path / "PWNED"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.bin"
    with open(path, "wb") as f:
        pickle.dump({"backbone.a": Planted()}, f, protocol=2)
    source = resolve_init_from(str(path))
    with pytest.raises(TextclfError) as e:
        source.tensors()
    assert str(path) in str(e.value) and "weights_only" in str(e.value), e.value
    assert not marker.exists(), "the pickle was executed"


def test_a_plain_tensor_bin_file_is_read(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"backbone.a": torch.ones(2), "head.b": torch.zeros(1)}, path)
    assert sorted(resolve_init_from(str(path)).tensors()) == ["backbone.a", "head.b"]
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {"backbone.a": torch.ones(2)}, "epoch": 3}, nested)
    assert list(resolve_init_from(str(nested)).tensors()) == ["backbone.a"]


@pytest.mark.parametrize("what", ["missing", "wrong_suffix", "empty_folder", "run_without_weights", "bad_fold"])
def test_an_unusable_source_is_named(tmp_path, what):
    path = {"missing": tmp_path / "nope",
            "wrong_suffix": tmp_path / "weights.txt",
            "empty_folder": tmp_path / "empty",
            "run_without_weights": tmp_path / "run",
            "bad_fold": tmp_path / "run" / "fold_7"}[what]
    if what == "wrong_suffix":
        path.write_text("x")
    elif what == "empty_folder":
        path.mkdir()
    elif what in ("run_without_weights", "bad_fold"):
        (tmp_path / "run" / "fold_0").mkdir(parents=True)
        (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(TextclfError) as e:
        resolve_init_from(str(path))
    assert "model.init_from" in str(e.value) and str(path) in str(e.value), e.value


def test_init_from_a_hugging_face_task_model_maps_its_prefix(tiny_bert, tmp_path, caplog):
    """A BertForSequenceClassification-style file (bert.* + classifier.*): the backbone loads, the head does not."""
    state = load_file(str(tiny_bert / "model.safetensors"))
    changed = {f"bert.{k}": v + 1.0 for k, v in state.items()}
    changed["classifier.weight"] = torch.zeros(3, 32)
    path = tmp_path / "task_model.safetensors"
    save_file(changed, str(path))
    model = build(tiny_bert)
    caplog.set_level(logging.INFO)
    report = InitFrom(resolve_init_from(str(path))).apply(model)
    assert len(report["loaded"]) == 39 and report["unexpected"] == ["classifier.weight"]
    assert report["mapped"] == [{"from": "bert.", "to": "backbone.", "count": 39}]
    assert report["missing"] == ["head.out.bias", "head.out.weight"], report["missing"]
    torch.testing.assert_close(model.backbone.embeddings.word_embeddings.weight,
                               state["embeddings.word_embeddings.weight"] + 1.0)
    assert "bert. -> backbone." in caplog.text
    json.dumps(report)  # the report is what init_report.json holds


def test_init_from_where_nothing_fits_is_refused(tiny_bert, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x.weight": torch.zeros(3, 3), "y.bias": torch.zeros(2)}, str(path))
    with pytest.raises(TextclfError) as e:
        InitFrom(resolve_init_from(str(path))).apply(build(tiny_bert))
    assert str(path) in str(e.value) and "none of its 2 tensors" in str(e.value), e.value


def test_init_from_a_model_folder_puts_its_weights_under_the_backbone(tiny_bert, caplog):
    caplog.set_level(logging.INFO)
    source = resolve_init_from(str(tiny_bert))  # a save_pretrained folder: model.safetensors, bare backbone keys
    report = InitFrom(source).apply(build(tiny_bert, num_labels=2))
    assert report["mapped"] == [{"from": "", "to": "backbone.", "count": 39}] and len(report["loaded"]) == 39
    assert "(none) -> backbone. (39)" in report["summary"]


def test_every_fold_starts_from_the_same_weights(tiny_bert, tmp_path):
    model = build(tiny_bert)
    for p in model.parameters():
        p.data.normal_()
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    init = InitFrom(str(path), report_path=tmp_path / "init_report.json")
    first, second = build(tiny_bert), build(tiny_bert)
    init.apply(first)
    (tmp_path / "init_report.json").unlink()
    init.apply(second)
    assert not (tmp_path / "init_report.json").exists(), "the report is written once per run"
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert a.equal(b) and a.equal(model.state_dict()[name]), name


def test_a_run_folder_without_fold_0_names_the_folds_it_has(tmp_path):
    run = tmp_path / "run"
    (run / "fold_1").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    save_file({"a": torch.zeros(1)}, str(run / "fold_1" / "model.safetensors"))
    with pytest.raises(TextclfError, match=r"fold_0/model.safetensors.*model.init_from=.*fold_1"):
        resolve_init_from(str(run))
    assert resolve_init_from(str(run / "fold_1")).files == [run / "fold_1" / "model.safetensors"]


def test_a_mostly_random_backbone_is_only_a_warning_when_init_from_loads_over_it(tiny_bert, tmp_path, caplog):
    folder = variant(tiny_bert, tmp_path / "renamed", lambda sd: {f"model.{k}": v for k, v in sd.items()})
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in build(tiny_bert).state_dict().items()}, str(path))
    caplog.set_level(logging.INFO)
    torch.manual_seed(0)
    model = build_classifier(model_node(), OmegaConf.create(POOLING), OmegaConf.create(HEAD), 3,
                             name_or_path=str(folder), init_from=InitFrom(str(path)))
    assert "model.init_from loads over it" in warnings_of(caplog)
    torch.testing.assert_close(model.backbone.embeddings.word_embeddings.weight,
                               load_file(str(path))["backbone.embeddings.word_embeddings.weight"])


def test_a_truncated_safetensors_file_is_refused_by_the_preflight_check(tmp_path):
    from textclf.models.init_from import check_source

    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(TextclfError, match="not a readable safetensors file"):
        check_source(str(path))
