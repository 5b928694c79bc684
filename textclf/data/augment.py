"""More training rows made from each training row, with its label: augment=eda | mlm (conf/augment/).

- EDA (Wei & Zou 2019, "Easy Data Augmentation"): each copy of a text gets one operation, drawn from `ops`, applied
  to a share `p` of its words: synonym replacement, random swap, random deletion (never every word), random
  insertion of one of the text's own words. Synonyms are offline: a word's nearest whole-word neighbours (cosine)
  in the backbone's own input-embedding matrix, read from its weights file once per run.
- MaskedLM (TinyBERT-style): a share `p` of a copy's words is masked and each mask filled with one of the top_k
  whole words a masked-language model predicts there (augment.mlm_model, a local folder).

Words are whitespace-separated and keep their punctuation ("goal," stays "goal," with a new core word); an augmented
text joins its words with single spaces. Chinese and Japanese, written without spaces, are cut into characters
(see `segment`). A copy that comes out identical to its text (a one-word text, nothing the operation can change) is
left out, and the count is logged. Both are reproducible by seed (one numpy Generator) and label-preserving:
`Augmented.source` names the row each augmented text came from, and the run gives it that row's label exactly.
textclf.commands.train generates the copies once per run, for the training file's rows only, and adds to each fold's
training rows the copies of exactly those rows: validation, out-of-fold and test rows are only ever originals.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from safetensors import safe_open
from tqdm.auto import tqdm

from textclf.errors import TextclfError, own_errors
from textclf.io import bar_off, quiet_transformers

log = logging.getLogger(__name__)

OPS = ("synonym", "swap", "delete", "insert")
#: candidates for synonyms and predictions: the first this many whole-word vocabulary entries (lowest ids)
MAX_WORDS = 50_000
#: a progress bar from this many augmented texts on
PROGRESS_FROM = 5_000
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)  # leading punctuation, the word, trailing punctuation
#: Han ideographs and Japanese kana: scripts written without spaces whose every character stands alone (a word, or a
#: syllable of one), so a character is a safe unit to swap, delete, insert or mask. Thai, Lao, Khmer and Myanmar are
#: written without spaces too, but their vowels and tone marks are separate code points that combine with the
#: consonant before them: cut by code point they would make unreadable text, so they keep their spaces as the only
#: boundaries (a phrase is a word), and a text without any gives copies identical to it, which are left out.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002ffff"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_PIECES = re.compile(rf"\W*[{_CJK}]\W*|(?:(?![{_CJK}]).)+", re.S)  # one character each, punctuation attached


@dataclass
class Augmented:
    """Augmented texts, copy by copy over the source texts: texts[k] was made from the source row source[k]."""

    texts: list[str]
    source: np.ndarray


# ----------------------------------------------------------------------------- the options
def _check_common(copies, p, seed, top_k) -> None:
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise TextclfError(f"augment.copies must be a whole number >= 1 (augmented copies per training row), "
                           f"got {copies!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise TextclfError(f"augment.p must be a number in (0, 1] (the share of a text's words each copy changes), "
                           f"got {p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise TextclfError(f"augment.seed must be null (trainer.seed) or an integer >= 0, got {seed!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise TextclfError(f"augment.top_k must be a whole number >= 1, got {top_k!r}")


class EDA:
    """EDA: each copy applies one operation drawn from `ops` to max(1, round(p * words)) of a text's words."""

    def __init__(self, copies: int = 1, p: float = 0.1, seed: Optional[int] = None, ops: Sequence[str] = OPS,
                 top_k: int = 5):
        _check_common(copies, p, seed, top_k)
        ops = [ops] if isinstance(ops, str) else list(ops or ())
        unknown = [o for o in ops if o not in OPS]
        if not ops or unknown:
            what = f"unknown operation(s) {', '.join(map(repr, unknown))}" if unknown else "no operation given"
            raise TextclfError(f"augment.ops: {what}; choose from {', '.join(OPS)} (e.g. augment.ops=[swap,delete])")
        self.copies, self.p, self.seed, self.ops, self.top_k = copies, float(p), seed, tuple(map(str, ops)), top_k

    def augment(self, texts: Sequence[str], *, seed: int, tokenizer=None, name_or_path: str | None = None,
                device=None) -> Augmented:
        """`copies` augmented texts per text. Synonyms need the backbone's tokenizer and folder (name_or_path)."""
        rng = np.random.default_rng(seed)
        split = [segment(t) for t in texts]
        synonyms: dict[str, list[str]] = {}
        if "synonym" in self.ops:
            if tokenizer is None or name_or_path is None:
                raise TextclfError("augment=eda with ops synonym needs the backbone's tokenizer and weights")
            vocab = whole_words(tokenizer)
            wanted = {key for words in split for w in words if (key := vocab_key(_core(w)[1], vocab))}
            synonyms = nearest_words(sorted(wanted), vocab, input_embeddings(name_or_path), self.top_k)
        apply: dict[str, Callable] = {"swap": swap_words, "delete": delete_words, "insert": insert_words,
                                      "synonym": lambda w, n, r: replace_synonyms(w, n, r, synonyms)}
        out, source = [], []
        with tqdm(total=self.copies * len(split), desc="augment (eda)", unit="text", leave=False,
                  **bar_off(self.copies * len(split) < PROGRESS_FROM)) as bar:
            for _ in range(self.copies):
                for i, words in enumerate(split):
                    op = self.ops[int(rng.integers(len(self.ops)))]
                    out.append(join_words(apply[op](words, changes(len(words), self.p), rng)))
                    source.append(i)
                    bar.update()
        return changed_copies("eda", split, out, source)

    def __repr__(self) -> str:
        return f"EDA(copies={self.copies}, p={self.p}, ops={list(self.ops)}, top_k={self.top_k})"


class MaskedLM:
    """TinyBERT-style: per copy, max(1, round(p * words)) of a text's words are masked together and each mask
    is filled with one of the top_k whole words the masked-LM predicts there (never the word itself)."""

    #: what config validation says of a required key left out
    required_hints = {"mlm_model": "a local folder holding a masked-language model saved with save_pretrained "
                                   "(config.json, weights, tokenizer), e.g. augment.mlm_model=models/bert-base-uncased"}

    def __init__(self, mlm_model: str, copies: int = 1, p: float = 0.1, seed: Optional[int] = None, top_k: int = 5,
                 batch_size: int = 32, max_length: int = 256):
        _check_common(copies, p, seed, top_k)
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TextclfError(f"augment.{name} must be a whole number >= 1, got {value!r}")
        self.folder = masked_lm_folder(mlm_model)
        self.copies, self.p, self.seed, self.top_k = copies, float(p), seed, top_k
        self.batch_size, self.max_length = batch_size, max_length

    def augment(self, texts: Sequence[str], *, seed: int, tokenizer=None, name_or_path: str | None = None,
                device=None) -> Augmented:
        """`copies` augmented texts per text (the run's own tokenizer and backbone are not used)."""
        model, tok = load_masked_lm(self.folder)
        device = torch.device(device or "cpu")
        model.to(device)
        vocab = whole_words(tok)
        words_of = {i: w for w, i in vocab.items()}
        rng = np.random.default_rng(seed)
        split = [segment(t) for t in texts]
        # the plan: which words each copy masks, drawn first, in order, so batching cannot change it
        plans = []
        for _ in range(self.copies):
            for i, words in enumerate(split):
                where = [j for j, w in enumerate(words) if _core(w)[1].isalpha()]
                n = min(changes(len(words), self.p), len(where))
                plans.append((i, sorted(rng.choice(where, n, replace=False).tolist()) if n else []))
        masked = [join_words([tok.mask_token if j in at else w for j, w in enumerate(split[i])]) for i, at in plans]
        originals = [[vocab_key(_core(split[i][j])[1], vocab) for j in at] for i, at in plans]
        limit = min(self.max_length, int(getattr(model.config, "max_position_embeddings", 512) or 512), 512)
        candidates = self._predict(model, tok, masked, originals, vocab, limit, device)
        out, source = [], []
        for (i, at), top in zip(plans, candidates):
            words = list(split[i])
            for j, ids in zip(at, top):  # masks cut off by max_length have no prediction: the word stays
                if len(ids):
                    prefix, core, suffix = _core(words[j])
                    words[j] = prefix + match_case(words_of[int(ids[rng.integers(len(ids))])], core) + suffix
            out.append(join_words(words))
            source.append(i)
        return changed_copies("mlm", split, out, source)

    def _predict(self, model, tok, masked: list[str], originals: list[list], vocab: dict, max_length: int,
                 device) -> list[list[np.ndarray]]:
        """For each masked text, the top_k allowed token ids at each of its masks (in text order), in batches of
        similar length; only the mask positions go through the output projection (a vocabulary-wide row per
        token would not fit in memory for long batches)."""
        order = np.argsort([len(t) for t in masked], kind="stable")
        result: list[list[np.ndarray]] = [[] for _ in masked]
        allowed = torch.tensor(sorted(vocab.values()), dtype=torch.long)
        blocked = None  # every output but the whole words, once the logits' width is known
        head = model.get_output_embeddings()
        batches = range(0, len(order), self.batch_size)
        with torch.inference_mode():
            for start in tqdm(batches, desc="augment (mlm)", unit="batch", leave=False,
                              **bar_off(len(masked) < PROGRESS_FROM)):
                rows = [int(r) for r in order[start:start + self.batch_size] if originals[r]]
                if not rows:
                    continue
                enc = tok([masked[r] for r in rows], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
                at = enc["input_ids"] == tok.mask_token_id
                hook = head.register_forward_pre_hook(lambda _m, args: (args[0][at],) + args[1:]) if head else None
                try:
                    logits = model(**enc).logits
                finally:
                    if hook is not None:
                        hook.remove()
                logits = (logits if logits.dim() == 2 else logits[at]).float()
                if blocked is None:
                    blocked = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
                    blocked[allowed[allowed < logits.shape[1]].to(logits.device)] = False
                logits[:, blocked] = float("-inf")
                counts = at.sum(dim=1).tolist()
                k = 0
                for r, n in zip(rows, counts):
                    for own in originals[r][:n]:
                        if own is not None:
                            logits[k, vocab[own]] = float("-inf")
                        k += 1
                top = logits.topk(min(self.top_k, logits.shape[1]), dim=1)
                k = 0
                for r, n in zip(rows, counts):
                    result[r] = [ids[np.isfinite(vals)] for vals, ids in
                                 zip(top.values[k:k + n].cpu().numpy(), top.indices[k:k + n].cpu().numpy())]
                    k += n
        return result

    def __repr__(self) -> str:
        return f"MaskedLM(mlm_model={str(self.folder)!r}, copies={self.copies}, p={self.p}, top_k={self.top_k})"


def changed_copies(option: str, split: list[list[str]], out: list[str], source: list[int]) -> Augmented:
    """The copies that differ from their text. A copy the operation could not change (a one-word text: nothing to
    swap or delete; a word without synonyms; a text without spaces in a script that is not cut into characters)
    would only count its row twice, with nothing new to learn: it is left out, and the count logged. When no copy
    changed at all, the option would do nothing the user asked for: refused."""
    keep = [k for k, (text, s) in enumerate(zip(out, source)) if text != join_words(split[s])]
    if out and not keep:
        raise TextclfError(f"augment={option}: none of the {len(out)} copies differs from its original text: the "
                           f"texts give it no words to change (one word each, or no spaces between words in a script "
                           f"it does not cut into characters, such as Thai); write the texts with spaces between "
                           f"words, or drop augment")
    if len(keep) < len(out):
        log.warning("augment=%s: %d of %d copies are identical to their original text (no word boundaries to work "
                    "on: one-word texts, or no spaces between words) and are left out; %d copies train", option,
                    len(out) - len(keep), len(out), len(keep))
    return Augmented([out[k] for k in keep], np.asarray([source[k] for k in keep], dtype=np.int64))


def build_augmenter(node) -> EDA | MaskedLM | None:
    """The augment option's augmenter (its options checked); None for augment=none."""
    if not node or not node.get("_target_"):
        return None
    with own_errors():
        return instantiate(node, _convert_="all")


# ----------------------------------------------------------------------------- EDA's operations on a word list
def segment(text) -> list[str]:
    """A text's words: whitespace-separated, and inside a word every Han or kana character on its own with the
    punctuation next to it (see _CJK): "我爱北京。" -> 我, 爱, 北, 京。 Characters are a cheap segmentation, but a
    safe one for these scripts; a word segmenter (jieba, MeCab) would be another dependency and a guess per
    language, and without any cut a Chinese text would be one word that EDA cannot change."""
    words = []
    for word in str(text).split():
        words.extend(_PIECES.findall(word) if _CJK_CHAR.search(word) else [word])
    return words


def join_words(words: list[str]) -> str:
    """Words back into a text: single spaces, but none between two Han or kana pieces (those scripts use none)."""
    out = []
    for k, word in enumerate(words):
        if k and not (_CJK_CHAR.search(words[k - 1]) and _CJK_CHAR.search(word)):
            out.append(" ")
        out.append(word)
    return "".join(out)


def changes(n_words: int, p: float) -> int:
    """How many words a copy changes: max(1, round(p * words))."""
    return max(1, int(round(p * n_words)))


def swap_words(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """n times, two random words change places (the same words, another order)."""
    out = list(words)
    if len(out) >= 2:
        for _ in range(n):
            i, j = rng.choice(len(out), 2, replace=False)
            out[i], out[j] = out[j], out[i]
    return out


def delete_words(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """n random words removed, never every word (at most all but one)."""
    n = min(n, len(words) - 1)
    if n <= 0:
        return list(words)
    drop = set(rng.choice(len(words), n, replace=False).tolist())
    return [w for i, w in enumerate(words) if i not in drop]


def insert_words(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """n times, one of the text's own words (without its punctuation) inserted at a random place. A one-word text
    stays as it is: its word repeated ("goal goal") is no new sentence."""
    out = list(words)
    if len(words) >= 2:
        for _ in range(n):
            word = words[int(rng.integers(len(words)))]
            out.insert(int(rng.integers(len(out) + 1)), _core(word)[1] or word)
    return out


def replace_synonyms(words: list[str], n: int, rng: np.random.Generator, synonyms: dict[str, list[str]]) -> list[str]:
    """Up to n words that have neighbours replaced by one of them (punctuation and capitals kept); a word that is
    not one vocabulary entry has none and stays."""
    out = list(words)
    where = [i for i, w in enumerate(words) if synonyms.get(_synonym_key(_core(w)[1], synonyms))]
    if not where:
        return out
    for i in sorted(rng.choice(where, min(n, len(where)), replace=False).tolist()):
        prefix, core, suffix = _core(words[i])
        options = synonyms[_synonym_key(core, synonyms)]
        out[i] = prefix + match_case(options[int(rng.integers(len(options)))], core) + suffix
    return out


def _synonym_key(core: str, synonyms: dict) -> str | None:
    return core if core in synonyms else core.lower() if core.lower() in synonyms else None


def _core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, the word, trailing punctuation): 'goal,' -> ('', 'goal', ',')."""
    m = _CORE.match(word)
    return m.group(1), m.group(2), m.group(3)


def match_case(new: str, old: str) -> str:
    """`new` written like `old`: GOAL -> MATCH, Goal -> Match, goal -> match."""
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# ----------------------------------------------------------------------------- the vocabulary and embeddings
def whole_words(tokenizer) -> dict[str, int]:
    """{word: token id} for the vocabulary entries that are whole alphabetic words of two letters or more, lowest
    ids first, at most MAX_WORDS: WordPiece entries not starting with '##'; SentencePiece ('▁word') and byte-level
    BPE ('Ġword') entries in their word-start form, the marker dropped. Special tokens are left out."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    marker = next((m for m in ("▁", "Ġ") if any(t.startswith(m) for t in vocab)), None)
    words: dict[str, int] = {}
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i in special:
            continue
        if marker is not None:
            if not token.startswith(marker):
                continue
            token = token[len(marker):]
        elif token.startswith("##"):
            continue
        if len(token) >= 2 and token.isalpha() and token not in words:
            words[token] = i
            if len(words) >= MAX_WORDS:
                break
    return words


def vocab_key(core: str, vocab: dict) -> str | None:
    """The vocabulary entry a word is: itself, else lower-cased (uncased vocabularies); None: not one entry."""
    if not core:
        return None
    return core if core in vocab else core.lower() if core.lower() in vocab else None


def nearest_words(words: Sequence[str], vocab: dict[str, int], embeddings: np.ndarray, k: int,
                  chunk: int = 1024) -> dict[str, list[str]]:
    """{word: its k nearest whole-word vocabulary entries by cosine similarity of their input embeddings}, for the
    words given (each a key of vocab), in chunks of `chunk` words against the whole candidate list."""
    pairs = [(w, i) for w, i in vocab.items() if i < len(embeddings)]
    if not words or len(pairs) < 2:
        return {}
    names = [w for w, _ in pairs]
    position = {w: j for j, w in enumerate(names)}
    table = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings[[i for _, i in pairs]],
                                                                     dtype=np.float32)), dim=1)
    _, lowered = np.unique([w.lower() for w in names], return_inverse=True)  # one code per word in any case
    lowered = torch.from_numpy(lowered.reshape(-1))
    queries = [w for w in words if w in position]
    k = min(k, len(names) - 1)
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        rows = torch.tensor([position[w] for w in block])
        sims = table[rows] @ table.T
        sims[lowered[None, :] == lowered[rows][:, None]] = float("-inf")  # never itself, in any case
        values, top = sims.topk(k, dim=1)  # sorted, nearest first
        for w, cand, vals in zip(block, top.tolist(), values.tolist()):
            out[w] = [names[j] for j, v in zip(cand, vals) if v != float("-inf")]
    return out


#: names (endings) under which checkpoints keep their input-embedding matrix, most specific first
EMBEDDING_KEYS = ("word_embeddings.weight", "word_embedding.weight", "embed_tokens.weight", "wte.weight",
                  "shared.weight")


def input_embeddings(name_or_path: str) -> np.ndarray:
    """The backbone's input-embedding matrix (vocabulary x dim, float32): only that tensor, read from the folder's
    safetensors file(s); otherwise (a .bin checkpoint, a hub id) from the model loaded whole."""
    import transformers  # here, not at the top: config checks import this module for its signatures

    folder = Path(name_or_path)
    files = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [(folder / f, [k for k, v in weight_map.items() if v == f]) for f in dict.fromkeys(weight_map.values())]
    elif (folder / "model.safetensors").is_file():
        files = [(folder / "model.safetensors", None)]
    if files:
        for path, names in files:
            with safe_open(str(path), framework="pt") as f:
                keys = names if names is not None else list(f.keys())
                for ending in EMBEDDING_KEYS:
                    key = next((k for k in keys if k == ending or k.endswith("." + ending)), None)
                    if key is not None:
                        return f.get_tensor(key).float().numpy()

    quiet_transformers()
    try:
        model = transformers.AutoModel.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise TextclfError(f"augment=eda: cannot read the input embeddings of {name_or_path!r} for synonyms "
                           f"({type(e).__name__}: {e}); drop synonym from augment.ops") from None
    return model.get_input_embeddings().weight.detach().float().numpy()


# ----------------------------------------------------------------------------- the masked-LM model
def masked_lm_folder(mlm_model) -> Path:
    """augment.mlm_model as a local folder with config.json whose architectures (when listed) include a head."""
    # here, not at the top: config checks import this module for its signatures (tables loads pandas)
    from textclf.data.tables import resolve_path

    what = ("give a local folder holding a masked-language model saved with save_pretrained (config.json, weights, "
            "tokenizer), e.g. bert-base-uncased")
    if not isinstance(mlm_model, str) or not mlm_model.strip():
        raise TextclfError(f"augment.mlm_model is required with augment=mlm: {what}")
    folder = resolve_path(mlm_model)
    if not folder.is_dir():
        raise TextclfError(f"augment.mlm_model {mlm_model!r} is not a folder (looked at {folder}): {what}")
    config = folder / "config.json"
    if not config.is_file():
        raise TextclfError(f"augment.mlm_model {mlm_model!r} has no config.json: {what}")
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (ValueError, AttributeError):
        architectures = []
    if architectures and all(a.endswith("Model") and not a.endswith("LMHeadModel") for a in architectures):
        raise no_head_error(mlm_model, f"its config.json lists only {', '.join(architectures)}")
    return folder


def no_head_error(folder, why: str) -> TextclfError:
    return TextclfError(f"augment.mlm_model {str(folder)!r} has no masked-LM head ({why}): it is an encoder without "
                        f"the layer that predicts masked words (a sentence-embedding model such as the embedded "
                        f"MiniLM is one); give the folder of a masked-language model (config.json architectures "
                        f"like BertForMaskedLM), e.g. bert-base-uncased saved with save_pretrained")


def load_masked_lm(folder: Path):
    """(model in eval mode, tokenizer) from the folder; a model whose head weights the checkpoint lacks (they
    would start random) is refused."""
    import transformers  # here, not at the top: config checks import this module for its signatures

    quiet_transformers()
    try:
        model, info = transformers.AutoModelForMaskedLM.from_pretrained(str(folder), output_loading_info=True)
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise TextclfError(f"augment.mlm_model {str(folder)!r}: could not load a masked-language model from it "
                           f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})"
                           ) from None
    prefix = f"{model.base_model_prefix}."
    head = [k for k in info.get("missing_keys") or () if not str(k).startswith(prefix)]
    if head:
        raise no_head_error(folder, f"the weights lack {', '.join(sorted(map(str, head))[:3])}"
                                    f"{' ...' if len(head) > 3 else ''}")
    if tok.mask_token_id is None:
        raise TextclfError(f"augment.mlm_model {str(folder)!r}: its tokenizer has no mask token")
    return model.eval(), tok
