"""Train the tiny GLM-4.6V-architecture checkpoint that answers: it reads values, writes glmv's JSON, and stops.

Same architecture and processor as the random tiny (glmv_cli/engine/tiny.py): Glm4vForConditionalGeneration,
GLM's special tokens, the same chat template, attention heads of 64 (vLLM's CPU build serves it). What
differs is what makes it learnable on two cores (54 minutes measured):
- a BPE tokenizer whose pre-tokenizer isolates every digit, space and punctuation mark, so a value is the
  same token sequence in the document's text and in the JSON answer (copying is token-for-token);
- a wider, deeper text model (4 layers of 128), stored in bfloat16 (under 4 MiB);
- a curriculum: a pure copying task until copying works (induction heads; up to 2,400 steps), then short,
  image-free prompts (finding a field), then glmv's full prompts with page images, in batches of half the
  copy phase's size: a model this small is short of updates, not of examples.

Every example is what glmv sends: SYSTEM plus build_prompt for the built-in schemas and a few inline ones,
with and without the text-layer hint (the PDF's text as pdfium gives it), and `glmv ask` questions; and,
for half of the documents, a request as a client library sends it through `glmv serve` (instructor's and
the openai client's byte for byte). A share of the invoices are dense (many line items, a footer of
phone, bank and register numbers, a text layer out of reading order) so that it learns to stop on the
long, busy text layers of real invoices.

    python tools/train_tiny.py models/glmv-tiny-trained      # `make train-tiny`; 54 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import synth_docs as S  # noqa: E402

SEED = 0
HIDDEN, LAYERS, INTERMEDIATE, VOCAB_TARGET = 128, 4, 384, 2048
MAX_VISUAL_TOKENS = 144  # the processor's cap for this checkpoint: pages stay cheap on CPU
LONGEST_EDGE = 28 * 28 * 2 * MAX_VISUAL_TOKENS
END = "<|user|>"  # GLM ends a turn by opening the next one; one of the checkpoint's EOS ids
DEFAULTS = {
    "docs": 3000,
    "steps": 9400,
    "batch_tokens": 6000,
    "main_batch_tokens": 3000,
    "lr": 3e-3,
    "main_lr": 2e-3,
    "warmup": 100,
    "main_warmup": 600,
    "copy_max": 2400,
    "copy_loss": 0.2,
    "short_until": 0.3,
    "client_share": 0.5,
    "dense": 0.25,
    "pixels_only": 0.1,
}
RECIPE_FILES = ["tools/train_tiny.py", "tools/synth_docs.py", "samples/make_samples.py"]
SCHEMAS = ("invoice", "receipt", "screenshot", "document")


# --- recipe hash -------------------------------------------------------------------------------


def rendered_prompts() -> list[str]:
    """Everything glmv shows the model that training depends on, rendered (prompt wording, schemas, template)."""
    from glmv_cli.engine.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt, question_prompt
    from glmv_cli.extraction.schemas import resolve_schema

    out = [CHAT_TEMPLATE, json.dumps(SPECIAL_TOKENS), SYSTEM, question_prompt("Q?", "HINT")]
    for spec in [*SCHEMAS, *(s for s, _, _ in S.INLINE)]:
        schema = resolve_schema(spec)
        out += [build_prompt(schema), build_prompt(schema, text_hint="HINT"), json.dumps(schema.json_schema())]
    return out


def _without_module_docstring(source: str) -> str:
    """The code after a file's opening docstring: correcting what the docstring says is not a new recipe."""
    if source.startswith('"""'):
        end = source.find('"""', 3)
        if end != -1:
            return source[end + 3 :]
    return source


def recipe_hash() -> str:
    """The recipe: this script, the document generator, and every prompt the model learns from."""
    h = hashlib.sha256()
    for name in RECIPE_FILES:
        h.update(_without_module_docstring((ROOT / name).read_text()).encode())
    for text in rendered_prompts():
        h.update(text.encode())
    h.update(json.dumps(DEFAULTS, sort_keys=True).encode())
    return h.hexdigest()[:16]


# --- tokenizer, config -------------------------------------------------------------------------


def build_tokenizer(out: Path, corpus: list[str]) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from glmv_cli.engine.tiny import CHAT_TEMPLATE, NON_SPECIAL, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    # Every whitespace character, digit and punctuation mark is its own piece: "Acme" is the same
    # tokens after a quote as after a space, and a number is copied digit by digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s|\d|[^\w\s]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    specials = [AddedToken(t, special=t not in NON_SPECIAL, normalized=False) for t in SPECIAL_TOKENS]
    fast.add_special_tokens({"additional_special_tokens": specials})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def model_config(ids: dict[str, int], vocab: int) -> Any:
    from glmv_cli.engine.tiny import TEST_VISION, glm4v_config

    return glm4v_config(ids, vocab, TEST_VISION, hidden=HIDDEN, layers=LAYERS, intermediate=INTERMEDIATE)


def write_processor_files(out: Path) -> None:
    from glmv_cli.engine import tiny

    tiny.write_processor_files(out, LONGEST_EDGE)


# --- examples ----------------------------------------------------------------------------------


class Example:
    __slots__ = ("input_ids", "answer_start", "doc", "kind")

    def __init__(self, input_ids: list[int], answer_start: int, doc: int | None, kind: str):
        self.input_ids, self.answer_start, self.doc, self.kind = input_ids, answer_start, doc, kind


def draw_docs(seed: int, n: int, dense: float = 0.0) -> list[dict[str, Any]]:
    """n documents, each with its text layer as glmv reads it (a real PDF through pdfium) and a page image;
    a `dense` share of the invoices are long and busy (synth_docs.make_invoice)."""
    import pypdfium2 as pdfium

    from glmv_cli.inputs.pdf import _text

    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        doc = S.draw(rng, dense=dense)
        pdf = pdfium.PdfDocument(doc.pdf_bytes())
        text = _text(pdf[0])
        pdf.close()
        docs.append({"doc": doc, "text": text, "scale": rng.uniform(0.5, 1.2)})
    return docs


def tasks_for(doc: S.SynthDoc, rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, prompt spec, answer) triples for one document: its own schema, document, inline, a question."""
    out = [("extract", doc.kind, S.dump_answer(S.target(doc, doc.kind)))]
    if rng.random() < 0.35:
        out.append(("extract", "document", S.dump_answer(S.target(doc, "document"))))
    inline = [s for s, kinds, _ in S.INLINE if doc.kind in kinds]
    if inline:
        spec = rng.choice(inline)
        out.append(("extract", spec, S.dump_answer(S.target(doc, spec))))
    questions = [(q, f) for k, q, f in S.QUESTIONS if k == doc.kind]
    q, fact = rng.choice(questions)
    out.append(("ask", q, S.ask_answer(doc, fact)))
    return out


# What the client libraries send through `glmv serve` (instructor, LangChain, the openai client): the user's
# own instruction after the text layer, a JSON Schema in the system turn (instructor's JSON modes), a Markdown
# code block (MD_JSON), or the schema as an OpenAI tool the model calls in GLM's format.
# Instructor's system text byte for byte as instructor 1.x sends it to an OpenAI-style server (captured from
# its request body): an f-string whose indentation `dedent` cannot remove, because the schema's own lines
# start at column 0. MD_JSON adds its instruction as a second text part of the user's message, which glmv
# serve joins to the first with a blank line.
INSTRUCTOR_SYSTEM = (
    "\n            As a genius expert, your task is to understand the content and provide\n"
    "            the parsed objects in json that match the following json_schema:\n\n\n"
    "            {schema}\n\n"
    "            Make sure to return an instance of the JSON, not the schema itself\n"
)
MD_JSON = "Return the correct JSON response within a ```json codeblock. not the JSON_SCHEMA"
# A user's model's docstring, which pydantic writes into the schema as its description.
DESCRIPTIONS = {
    "invoice": ["An invoice's number and total.", "Invoice details.", "The fields of an invoice."],
    "receipt": ["A receipt's merchant and total.", "Expense details.", "The fields of a receipt."],
    "screenshot": ["What the screen shows.", "Screen details."],
}
CLIENT_ASKS = {
    "invoice": ["Extract the invoice.", "Extract the data from this invoice.", "Save this invoice."],
    "receipt": ["Extract the receipt.", "Extract the data from this receipt.", "Record this expense."],
    "screenshot": ["Describe this screen.", "Extract the data from this screenshot."],
}
CLIENT_ASKS_ANY = ["Extract the data from this document.", "Extract the fields.", "Read this document."]
TOOL_NAMES = {
    "invoice": ["Invoice", "InvoiceData", "Numbers", "save_invoice", "record_invoice"],
    "receipt": ["Receipt", "Expense", "record_expense", "save_receipt"],
    "screenshot": ["Screen", "ScreenInfo", "log_screen"],
}
OBSERVATION = "<|observation|>"  # a tool call ends the turn: the caller answers with the tool's result


def client_fields(doc: S.SynthDoc, rng: random.Random) -> dict[str, Any]:
    """A user's own model: an inline spec's fields, or 2-4 scalar fields of the document's built-in schema."""
    inline = [m for s, kinds, m in S.INLINE if doc.kind in kinds]
    if inline and rng.random() < 0.5:
        return {k: doc.truth.get(v) for k, v in rng.choice(inline).items()}
    scalar = [k for k, v in doc.truth.items() if not isinstance(v, (list, dict))]
    keep = set(rng.sample(scalar, min(len(scalar), rng.randint(2, 4))))
    return {k: doc.truth[k] for k in scalar if k in keep}


def client_schema(name: str, fields: dict[str, Any], doc: str | None = None) -> dict[str, Any]:
    """The JSON Schema pydantic writes for such a model (optional fields: anyOf with null; a docstring
    becomes the description)."""
    from pydantic import create_model

    types = {k: (float | None if isinstance(v, float) else str | None) for k, v in fields.items()}
    model = create_model(name, __doc__=doc, **{k: (t, ...) for k, t in types.items()})  # type: ignore[call-overload]
    return model.model_json_schema()


def tool_call(name: str, fields: dict[str, Any]) -> str:
    """GLM's call format: string values raw, others as JSON (the chat template's own rendering)."""
    args = "".join(
        f"<arg_key>{k}</arg_key>\n<arg_value>{v if isinstance(v, str) else S.dump_answer({'v': v})[5:-1]}</arg_value>\n"
        for k, v in fields.items()
    )
    return f"<tool_call>{name}\n{args}</tool_call>"


def client_task(doc: S.SynthDoc, rng: random.Random) -> dict[str, Any]:
    """One request as a client library would send it, and the answer: messages' texts, tools, END token."""
    fields = client_fields(doc, rng)
    name = rng.choice(TOOL_NAMES[doc.kind])
    schema = client_schema(name, fields, rng.choice(DESCRIPTIONS[doc.kind]) if rng.random() < 0.5 else None)
    ask = rng.choice(CLIENT_ASKS[doc.kind] + CLIENT_ASKS_ANY)
    style = rng.choices(["tool", "tool_question", "json", "md_json", "keys"], [0.35, 0.1, 0.25, 0.15, 0.15])[0]
    task: dict[str, Any] = {"system": None, "tools": None, "ask": ask, "end": END}
    if style in ("tool", "tool_question"):
        described = rng.random() < 0.5  # instructor: the docstring, or its own sentence; the openai client: none
        default = f"Correctly extracted `{name}` with all the required parameters with correct types"
        desc = schema.get("description") or default
        params = {k: v for k, v in schema.items() if k not in ("title", "description")}
        tool = {
            "type": "function",
            "function": {"name": name, "description": desc if described else "", "parameters": params},
        }
        task["tools"] = [tool]
        if style == "tool":
            task["answer"], task["end"] = tool_call(name, fields), OBSERVATION
        else:  # a plain question while a tool is offered: answered in text (tool_choice auto)
            q, fact = rng.choice([(q, f) for k, q, f in S.QUESTIONS if k == doc.kind])
            task["ask"], task["answer"] = q, S.ask_answer(doc, fact)
        return task
    answer = S.dump_answer(fields)
    if style == "keys":  # json_object with the keys named in the instruction (LangChain's json_mode)
        task["ask"] = f"{ask} Return a JSON object with the keys {', '.join(fields)}."
    else:
        task["system"] = INSTRUCTOR_SYSTEM.format(schema=json.dumps(schema, indent=2, ensure_ascii=False))
    if style == "md_json":
        task["ask"] = f"{ask}\n\n{MD_JSON}"
        answer = f"```json\n{answer}\n```"
    task["answer"] = answer
    return task


def encode_client(processor: Any, tokenizer: Any, task: dict[str, Any], hint: str | None, image: Any):
    from glmv_cli.extraction.prompt import question_prompt

    messages = []
    if task["system"]:
        messages.append({"role": "system", "content": [{"type": "text", "text": task["system"]}]})
    content = [{"type": "text", "text": question_prompt(task["ask"], hint)}]
    messages.append({"role": "user", "content": ([{"type": "image"}] if image is not None else []) + content})
    return _encode_messages(processor, tokenizer, messages, task["tools"], image, task["answer"], task["end"])


@functools.cache
def _schema(spec: str) -> Any:
    """One schema object a spec: its fields and JSON Schema are worked out once, not once an example."""
    from glmv_cli.extraction.schemas import resolve_schema

    return resolve_schema(spec)


def encode(processor: Any, tokenizer: Any, spec: str, task: str, hint: str | None, image: Any, answer: str):
    """input_ids (prompt + answer + END), the answer's start, and the processor's image tensors."""
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt, question_prompt

    messages = []
    if task == "extract":
        prompt = build_prompt(_schema(spec), text_hint=hint)
        messages.append({"role": "system", "content": [{"type": "text", "text": SYSTEM}]})
    else:
        prompt = question_prompt(spec, hint)
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
    messages.append({"role": "user", "content": content})
    return _encode_messages(processor, tokenizer, messages, None, image, answer, END)


def _encode_messages(processor: Any, tokenizer: Any, messages: list, tools: Any, image: Any, answer: str, end: str):
    text = processor.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if image is not None:
        kwargs["images"] = [[image]]
    enc = processor(**kwargs)
    ids = enc["input_ids"][0].tolist()
    answer_ids = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(end)]
    images = (enc["pixel_values"], enc["image_grid_thw"]) if image is not None else None
    return ids + answer_ids, len(ids), images


def _reuse_processed_image(processor: Any) -> None:
    """Each document's page goes through the image processor once, not once per task (a third of the 3 minutes
    the examples took): the processor's output for the last image it saw is kept and handed out again."""
    ip = processor.image_processor
    preprocess, last = ip.preprocess, {}

    def leaves(x: Any) -> list[Any]:
        return [y for i in x for y in leaves(i)] if isinstance(x, list | tuple) else [x]

    def cached(images: Any, *args: Any, **kwargs: Any) -> Any:
        pages = leaves(images)
        key = ([id(i) for i in pages], repr(args), repr(sorted(kwargs.items())))
        if last.get("key") != key:
            last.update(key=key, pages=pages, out=preprocess(images, *args, **kwargs))  # holds the pages: ids stay
        return last["out"]

    ip.preprocess = cached


def _chat(processor: Any, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False)


def _with_answer(processor: Any, tokenizer: Any, text: str, answer: str) -> tuple[list[int], int]:
    ids = processor(text=[text], return_tensors="pt")["input_ids"][0].tolist()
    answer_ids = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(END)]
    return ids + answer_ids, len(ids)


def encode_short(processor: Any, tokenizer: Any, spec: str, task: str, hint: str, answer: str):
    """The curriculum's short form: the text layer and a one-line instruction, no system prompt, no image."""
    head = f"Extract the {spec} fields." if task == "extract" else spec
    return _with_answer(processor, tokenizer, _chat(processor, f"<<<\n{hint}\n>>>\n{head}"), answer)


def encode_copy(processor: Any, tokenizer: Any, text: str, rng: random.Random):
    """Repeat a few lines of a text layer: the pure copying task that grows induction heads first."""
    lines = text.splitlines()
    a = rng.randrange(len(lines))
    piece = "\n".join(lines[a : a + rng.randint(2, 6)])
    return _with_answer(processor, tokenizer, _chat(processor, f"<<<\n{piece}\n>>>\nRepeat the text."), piece)


def pick_pool(progress: float, args: argparse.Namespace, rng: random.Random) -> str:
    """After the copy phase: short prompts first, then glmv's full prompts, each phase keeping a share of the
    earlier ones. The copy share is what keeps copying alive: at 10% then 5% the held-out copy loss rose
    from under 0.3 to 0.81 in the first 1,000 main steps, and the names in the answers came out made up."""
    if progress < args.short_until:
        return rng.choices(["copy", "short"], [0.2, 0.8])[0]
    return rng.choices(["copy", "short", "full"], [0.1, 0.15, 0.75])[0]


# --- training ----------------------------------------------------------------------------------


def batches(examples: list[Example], batch_tokens: int, rng: random.Random) -> list[list[Example]]:
    """Length-bucketed batches of about batch_tokens (padded) tokens, in random order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), rng.random()))
    out, cur, longest = [], [], 0
    for i in order:
        n = len(examples[i].input_ids)
        if cur and max(longest, n) * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(examples[i])
        longest = max(longest, n)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def step_loss(model: Any, batch: list[Example], images: dict[int, Any], pad: int, image_id: int) -> tuple[Any, int]:
    import torch

    n = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), n), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    pix, grids = [], []
    for r, e in enumerate(batch):
        k = len(e.input_ids)
        ids[r, :k] = torch.tensor(e.input_ids)
        mask[r, :k] = 1
        labels[r, e.answer_start : k] = ids[r, e.answer_start : k]
        if e.doc is not None:
            p, g = images[e.doc]
            pix.append(p.float())
            grids.append(g)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if pix:
        kwargs["pixel_values"] = torch.cat(pix)
        kwargs["image_grid_thw"] = torch.cat(grids)
        kwargs["mm_token_type_ids"] = (ids == image_id).long()
    hidden = model.model(**kwargs).last_hidden_state
    # Only answer positions predict: the LM head runs on them alone.
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), target[keep])
    return loss, int(keep.sum())


def greedy_answer(model: Any, ex: Example, images: dict[int, Any], tokenizer: Any, limit: int = 400) -> str:
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    """Plain greedy decoding (no grammar) of one example's answer: a quick check during training."""
    import torch

    ids = torch.tensor([ex.input_ids[: ex.answer_start]])
    kwargs: dict[str, Any] = {}
    if ex.doc is not None:
        p, g = images[ex.doc]
        kwargs = {"pixel_values": p.float(), "image_grid_thw": g, "mm_token_type_ids": (ids == image_id).long()}
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=limit, do_sample=False, **kwargs
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def train(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer, Glm4vForConditionalGeneration

    from glmv_cli.engine.loader import load_processor
    from glmv_cli.engine.tiny import SPECIAL_TOKENS
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt

    started = time.time()
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    out.mkdir(parents=True, exist_ok=True)
    docs = draw_docs(SEED, args.docs, args.dense)
    log(f"{len(docs)} documents drawn in {time.time() - started:.0f} s")

    from glmv_cli.extraction.schemas import resolve_schema

    corpus = [SYSTEM] * 50
    for spec in [*SCHEMAS, *(s for s, _, _ in S.INLINE)]:
        corpus += [build_prompt(resolve_schema(spec))] * 20
    # The tokenizer learns from the plain documents only: the dense invoices' many made-up words (item codes,
    # bank and domain names) turn such words into single rare tokens, and copying then formed late and weak
    # (held-out copy loss 0.96 after 2,000 steps; without them it drops below 0.3 at step 1,706).
    for d in docs:
        if d["doc"].dense:
            continue
        corpus += [d["text"] or "", S.dump_answer(S.target(d["doc"], d["doc"].kind))]
    corpus += [q for _, q, _ in S.QUESTIONS] * 10
    tokenizer = build_tokenizer(out, corpus)
    write_processor_files(out)
    processor, _ = load_processor(str(out), None)
    _reuse_processed_image(processor)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (len(tokenizer) // 64 + 2) * 64

    # Three pools, one curriculum. copy: repeat a stretch of a text layer (induction heads: copying token for
    # token). short: a one-line instruction and the text layer, no image (finding a field's value and copying
    # it). full: glmv's real prompts, page image included, with the text layer or from pixels only (10%:
    # enough to learn to answer and stop on an image alone; a model this small cannot read the values there,
    # so more such examples only teach it to make values up), and for a share of the documents a request as
    # the client libraries send it (tools, JSON modes).
    images: dict[int, Any] = {}
    pools: dict[str, list[Example]] = {"copy": [], "short": [], "full": []}
    for i, d in enumerate(docs):
        doc: S.SynthDoc = d["doc"]
        image = doc.image(d["scale"])
        hinted = rng.random() >= args.pixels_only and d["text"]
        for task, spec, answer in tasks_for(doc, rng):
            hint = d["text"] if hinted else None
            seq, start, img = encode(processor, tokenizer, spec, task, hint, image, answer)
            if img is not None and i not in images:
                images[i] = (img[0].to(torch.bfloat16), img[1])
            pools["full"].append(Example(seq, start, i, task))
            if d["text"]:
                seq, start = encode_short(processor, tokenizer, spec, task, d["text"], answer)
                pools["short"].append(Example(seq, start, None, task))
        if rng.random() < args.client_share:
            client = client_task(doc, rng)
            seq, start, _ = encode_client(processor, tokenizer, client, d["text"] if hinted else None, image)
            pools["full"].append(Example(seq, start, i, "client"))
        if d["text"] and not doc.dense:  # footers of IBANs and digit runs slow copying's forming (measured)
            for _ in range(3):
                seq, start = encode_copy(processor, tokenizer, d["text"], rng)
                pools["copy"].append(Example(seq, start, None, "copy"))
    held = pools["full"][-40:]
    pools["full"] = pools["full"][:-40]
    for name, pool in pools.items():
        lens = sorted(len(e.input_ids) for e in pool)
        log(f"{name}: {len(pool)} examples, median {lens[len(lens) // 2]} tokens, max {lens[-1]}")
    log(f"vocab {len(tokenizer)}; prepared in {time.time() - started:.0f} s")

    model = Glm4vForConditionalGeneration(model_config(ids, vocab))
    params = sum(p.numel() for p in model.parameters())
    log(f"{params / 1e6:.2f}M parameters")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    pad = ids["<|endoftext|>"]
    queues: dict[str, list[list[Example]]] = {name: [] for name in pools}
    step, seen, losses = 0, 0, []
    batch_tokens = args.batch_tokens
    model.train()

    def train_step(name: str, lr: float) -> None:
        nonlocal step, seen
        if not queues[name]:
            queues[name] = batches(pools[name], batch_tokens, rng)
        batch = queues[name].pop()
        for g in opt.param_groups:
            g["lr"] = lr
        loss, _ = step_loss(model, batch, images, pad, ids["<|image|>"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append((name, loss.item()))
        seen += len(batch)
        step += 1
        if step % 50 == 0:
            recent: dict[str, list[float]] = {}
            for k, v in losses[-100:]:
                recent.setdefault(k, []).append(v)
            parts = " ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(recent.items()))
            log(f"step {step} loss {parts} lr {lr:.5f} seen {seen} t {time.time() - started:.0f}s")
        if args.probe and step % args.probe == 0:
            model.eval()
            with torch.no_grad():
                for ex in held[:3]:
                    got = greedy_answer(model, ex, images, tokenizer)
                    want = tokenizer.decode(ex.input_ids[ex.answer_start :], skip_special_tokens=True)
                    log(f"  want {want[:150]}\n  got  {got[:150]}")
            model.train()

    # Phase 1, copying alone until it works. Its loss sits on a plateau (about 1.4, what spelling knowledge
    # alone gives) for some 1,000 steps, then drops within 200 as induction heads form. Left earlier, the
    # model never learns to copy an unseen name: it writes its first piece and makes up the rest.
    # It stops below 0.2, past the drop rather than just at it (0.3): the steps after the drop are cheap (0.35 s)
    # and copying is firmer when the new tasks start.
    while step < args.copy_max:
        train_step("copy", args.lr * min(1.0, (step + 1) / args.warmup))
        recent = [v for _, v in losses[-100:]]
        if len(recent) == 100 and sum(recent) / 100 < args.copy_loss:
            break
    copy_steps = step
    log(f"copying learned after {copy_steps} steps")
    # The job in half the batch and twice the steps: this model is short of updates, not of examples. Added to
    # the 55-minute checkpoint of full batches, 1,400 steps of 3,000 tokens took held-out field F1 to 0.955 and
    # 700 steps of 6,000 tokens (the same work) to 0.940. The rate goes down with the batch (by its square root).
    batch_tokens = args.main_batch_tokens
    queues = {name: [] for name in pools}
    # Phase 2: the job, on a cosine schedule after a warm-up: the new tasks' first losses (over 4) at the full
    # rate undo the copying just learned (the copy loss went from 0.6 back to 1.8 in 50 steps without it).
    for i in range(args.steps):
        warm = min(1.0, (i + 1) / args.main_warmup)
        lr = warm * args.main_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / args.steps)))
        train_step(pick_pool(i / args.steps, args, rng), lr)
        if (i + 1) % 1000 == 0 and i + 1 < args.steps:
            save(model, out, ids)  # a checkpoint to measure while training goes on

    model.eval()
    save(model, out, ids)
    AutoTokenizer.from_pretrained(out)  # loads back
    return {
        "recipe": recipe_hash(),
        "seed": SEED,
        "steps": step,
        "copy_steps": copy_steps,
        "examples_seen": seen,
        "documents": args.docs,
        "parameters": params,
        "final_loss": round(
            sum(v for k, v in losses[-200:] if k == "full") / max(1, sum(k == "full" for k, _ in losses[-200:])), 4
        ),
        "train_seconds": round(time.time() - started),
        "settings": {k: getattr(args, k) for k in DEFAULTS},
    }


def save(model: Any, out: Path, ids: dict[str, int]) -> None:
    """The checkpoint as glmv loads it: weights in bfloat16 (under 4 MiB), the vendor's generation defaults."""
    import copy

    import torch
    from transformers import GenerationConfig

    export = copy.deepcopy(model).to(torch.bfloat16).eval()
    export.generation_config = GenerationConfig(
        eos_token_id=[ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,  # the vendor's chat defaults, as the real checkpoint ships them; glmv decodes greedily
        temperature=0.8,
        top_p=0.6,
        top_k=2,
    )
    export.save_pretrained(out)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tools/train_tiny.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=ROOT / "models" / "glmv-tiny-trained")
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--probe", type=int, default=0, help="greedy-decode 3 held examples every N steps")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = train(args.out, args)
    path = args.out / "manifest.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(manifest)
    path.write_text(json.dumps(old, indent=2) + "\n")
    log(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
