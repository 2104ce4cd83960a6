"""Exports that other tools read correctly: transformers (installed and the declared floor), its generate stop rules.

The exported SFT's logits equal our model's; its ``generation_config`` stops at ``<extra_id_1>`` (the stop string
found by transformers' own ``StopStringCriteria``; a one-token marker goes into ``eos_token_id``); ``config.json``
carries the rope base in the transformers 4 and 5 forms; the exported APM, fed the chat-template rendering of a
conversation, scores what our APM scores on the regression text, for the labelled attributes only; the model card and
the done line. The floor test reruns the exports under ``transformers==4.46.3`` (installed by ``scripts/setup.sh``
into ``.venv/transformers-floor``; skipped where it is absent) and compares with the installed transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hf_interop import GPT2, make_hf_dir, restore  # noqa: E402

from nemo_steerlm.attributes import TURN_MARKER, AttributeSchema  # noqa: E402
from nemo_steerlm.data.template import Conversation, Turn, regression_text  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BPE_4K = REPO / "nemo_steerlm" / "resources" / "tokenizers" / "steerlm_bpe_4k"
FLOOR = Path(os.environ.get("STEERLM_TRANSFORMERS_FLOOR", REPO / ".venv" / "transformers-floor"))
ATOL = 1e-4
HELPSTEER = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
CONVERSATIONS = [
    (Conversation([Turn("What is the capital of France?", "User")]), "Paris."),
    (
        Conversation(
            [Turn("Hi", "User"), Turn("Hello! How can I help?", "Assistant", "helpfulness:3"), Turn("A joke?", "User")]
        ),
        "Why did the chicken cross the road? To get to the other side.",
    ),
    (Conversation([Turn("Name three colours.", "User")], system="Be brief."), "Red, green and blue."),
]


def to_messages(conv: Conversation, response: str) -> list[dict]:
    messages = [{"role": "system", "content": conv.system}]
    for turn in conv.turns:
        message = {"role": turn.role.lower(), "content": turn.value}
        if turn.label is not None:
            message["label"] = turn.label
        messages.append(message)
    return messages + [{"role": "assistant", "content": response}]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An SFT and an APM (trained head, HelpSteer labels only) imported from one tiny HF model, then exported."""
    from nemo_steerlm.interop.convert import export_hf, import_hf
    from nemo_steerlm.models.checkpoint import save_nemo

    root = tmp_path_factory.mktemp("export")
    hf_dir = make_hf_dir(root / "hf", tie=False)
    sft = import_hf(hf_dir, "sft", root / "sft.nemo")
    sft_summary = export_hf(sft, root / "sft_out")
    # the APM on the 4k BPE: transformers 5 saves its tokenizer as "TokenizersBackend", unknown to transformers 4
    apm_hf = make_hf_dir(root / "hf_bpe", tie=True, tokenizer=BPE_4K, seed=1)
    apm = restore(import_hf(apm_hf, "apm", root / "apm.nemo", schema=AttributeSchema()), "apm")
    apm.record_labelled_attributes(HELPSTEER)
    with torch.no_grad():  # a trained head, not the seeded init
        apm.model.regression_head.weight.mul_(3.0).add_(0.01)
    save_nemo(apm, root / "apm_trained.nemo")
    apm_summary = export_hf(root / "apm_trained.nemo", root / "apm_out")
    return {"root": root, "hf": hf_dir, "sft": sft, "sft_out": root / "sft_out", "apm_out": root / "apm_out",
            "apm_nemo": root / "apm_trained.nemo", "sft_summary": sft_summary, "apm_summary": apm_summary}  # fmt: skip


def test_config_has_rope_theta_in_both_forms(exports):
    config = json.loads((exports["sft_out"] / "config.json").read_text())
    assert config["rope_theta"] == 5000.0  # transformers 4 reads this one; without it, base 10,000
    assert config["rope_parameters"] == {"rope_theta": 5000.0, "rope_type": "default"}
    assert "rope_scaling" not in config  # default rotary: nothing to scale


def test_generation_config_stops_at_the_turn_marker(exports):
    from nemo_steerlm.interop.convert import stop_settings

    out = exports["sft_out"]
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    gen = transformers.GenerationConfig.from_pretrained(str(out))
    assert len(tok(TURN_MARKER, add_special_tokens=False)["input_ids"]) > 1  # GPT-2 splits the marker
    assert gen.stop_strings == [TURN_MARKER] and gen.eos_token_id == tok.eos_token_id
    criteria = transformers.StopStringCriteria(tokenizer=tok, stop_strings=gen.stop_strings)
    stops = tok(["Paris.\n" + TURN_MARKER, "Paris.\n<extra_id_2>"], add_special_tokens=False)
    width = max(len(ids) for ids in stops["input_ids"])
    batch = torch.tensor([[tok.eos_token_id] * (width - len(ids)) + ids for ids in stops["input_ids"]])
    assert criteria(batch, torch.zeros(2, len(tok))).tolist() == [True, False]
    # a tokenizer that has the marker as one token: it joins EOS in eos_token_id and no stop string is needed
    one = transformers.AutoTokenizer.from_pretrained(str(GPT2))
    one.add_special_tokens({"additional_special_tokens": [TURN_MARKER]})
    marker_id = one.convert_tokens_to_ids(TURN_MARKER)
    assert stop_settings(one) == {"eos_token_id": [one.eos_token_id, marker_id], "stop_strings": []}


def test_exported_generate_stops_at_the_marker_it_produces(exports):
    """A model whose every greedy step writes the marker: generate ends right after it (EOS alone would not)."""
    out = exports["sft_out"]
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    marker = tok(TURN_MARKER, add_special_tokens=False)["input_ids"]
    prompt = tok("Hello", add_special_tokens=False)["input_ids"]

    def force_marker(batch_id, input_ids):  # the allowed next token spells the marker, over and over
        done = len(input_ids) - len(prompt)
        return [marker[done % len(marker)]]

    with torch.no_grad():
        ids = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             tokenizer=tok, do_sample=False, max_new_tokens=40,
                             prefix_allowed_tokens_fn=force_marker)[0].tolist()  # fmt: skip
    assert ids[len(prompt) :] == marker  # stopped after one marker, not after 40 tokens


def test_apm_export_scores_chat_template_input_like_ours(exports):
    out = exports["apm_out"]
    ours = restore(exports["apm_nemo"], "apm")
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert [plain.config.id2label[i] for i in range(plain.config.num_labels)] == HELPSTEER
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    texts = [regression_text(conv, response) for conv, response in CONVERSATIONS]
    rendered = [tok.apply_chat_template(to_messages(c, r), tokenize=False) for c, r in CONVERSATIONS]
    assert rendered == texts  # the template ends at the <extra_id_2> read-out, labels left out, as in training
    scores, _ = ours.predict_texts(texts)
    columns = [list(ours.schema.names).index(n) for n in HELPSTEER]
    batch = tok(rendered, add_special_tokens=False, padding=True, return_tensors="pt")
    assert tok.padding_side == "right" and batch["attention_mask"].sum(1).tolist() != [batch["input_ids"].shape[1]] * 3
    with torch.no_grad():
        theirs = plain(**batch).logits
    assert theirs.shape == (3, 5)
    assert (theirs - torch.as_tensor(scores[:, columns])).abs().max().item() <= ATOL
    assert scores[:, columns].std() > 0.01  # a head that scores texts differently: the comparison means something


def test_model_card_and_summary(exports):
    card = (exports["apm_out"] / "README.md").read_text()
    for text in ["Base model", "Licence", "Steering label syntax", "labelled in training: " + ", ".join(HELPSTEER)]:
        assert text in card
    assert "quality" not in card.split("labelled in training:")[1].split("\n")[0]
    sft_card = (exports["sft_out"] / "README.md").read_text()
    assert "stop_strings" in sft_card and "sft.nemo" in sft_card
    # the prompt policy the SFT was trained with: its own max_context_tokens, not a generic number
    policy = json.loads((exports["sft_out"] / "steerlm.json").read_text())["prompt_policy"]
    assert policy["max_context_tokens"] == 0 and policy["seq_length"] > 0  # imported from HF: no cap is known
    assert f"Training kept whole conversations up to {policy['seq_length']} tokens" in sft_card
    assert "How much of a prompt" not in card
    assert exports["sft_summary"]["model_dir"] == str(exports["sft_out"])
    assert exports["sft_summary"]["stop_strings"] == [TURN_MARKER]


_FLOOR_SCRIPT = r"""
import json, sys, torch, transformers
sft, apm, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tok = transformers.AutoTokenizer.from_pretrained(sft)
model = transformers.AutoModelForCausalLM.from_pretrained(sft).eval()
ids = tok(texts[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
gen = transformers.GenerationConfig.from_pretrained(sft)
atok = transformers.AutoTokenizer.from_pretrained(apm)
amodel = transformers.AutoModelForSequenceClassification.from_pretrained(apm).eval()
batch = atok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
with torch.no_grad():
    logits, scores = model(input_ids=ids).logits, amodel(**batch).logits
labels = [amodel.config.id2label[i] for i in range(amodel.config.num_labels)]
print(json.dumps({"version": transformers.__version__, "rope_theta": model.config.rope_theta,
                  "tokenizer": type(tok).__name__, "stop_strings": gen.stop_strings, "logits": logits.tolist(),
                  "scores": scores.tolist(), "apm_tokenizer": type(atok).__name__, "labels": labels}))
"""


def test_model_card_tells_how_to_cut_a_prompt_under_a_context_cap():
    from nemo_steerlm.data.tokenization import PromptPolicy
    from nemo_steerlm.interop.model_card import _reading

    text = _reading(PromptPolicy(seq_length=512, max_context_tokens=64))
    assert "at most 64 tokens before each first answer" in text and "cut its token ids to the last 64" in text
    assert "512 minus `max_new_tokens`" in text


def test_exports_load_identically_with_the_floor_transformers(exports):
    if not (FLOOR / "transformers").is_dir():
        pytest.skip(f"no floor transformers at {FLOOR} (bash scripts/setup.sh installs transformers 4.46.3 there)")
    texts = [regression_text(conv, response) for conv, response in CONVERSATIONS]
    env = {**os.environ, "PYTHONPATH": str(FLOOR), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    args = [sys.executable, "-c", _FLOOR_SCRIPT, str(exports["sft_out"]), str(exports["apm_out"]), json.dumps(texts)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    old = json.loads(done.stdout.strip().splitlines()[-1])
    assert old["version"].startswith("4.") and old["rope_theta"] == 5000.0
    assert old["stop_strings"] == [TURN_MARKER] and old["labels"] == HELPSTEER
    assert old["apm_tokenizer"] == "PreTrainedTokenizerFast"
    tok = transformers.AutoTokenizer.from_pretrained(str(exports["sft_out"]))
    ids = tok(texts[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    new_model = transformers.AutoModelForCausalLM.from_pretrained(str(exports["sft_out"])).eval()
    apm_tok = transformers.AutoTokenizer.from_pretrained(str(exports["apm_out"]))
    new_apm = transformers.AutoModelForSequenceClassification.from_pretrained(str(exports["apm_out"])).eval()
    with torch.no_grad():
        logits = new_model(input_ids=ids).logits
        scores = new_apm(**apm_tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")).logits
    assert (torch.tensor(old["logits"]) - logits).abs().max().item() <= ATOL
    assert (torch.tensor(old["scores"]) - scores).abs().max().item() <= ATOL


def test_done_line_names_the_model_folder(tmp_path, capsys):
    from omegaconf import OmegaConf

    from nemo_steerlm.recipes.common import run_stage

    def body(cfg, output_dir):
        return {"model_dir": str(output_dir / "hf")}  # what export's body returns

    run_stage("export", OmegaConf.create({"output_dir": str(tmp_path / "D")}), body)
    assert capsys.readouterr().out.strip().endswith(f"-> {tmp_path / 'D' / 'hf'}")
    run_stage("prepare", OmegaConf.create({"output_dir": str(tmp_path / "P")}), lambda cfg, out: {"rows": {}})
    assert capsys.readouterr().out.strip().endswith(f"-> {tmp_path / 'P'}")  # other stages: output_dir
