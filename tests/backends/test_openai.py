"""The OpenAI-compatible client against a stub server on 127.0.0.1 (a random port, no network)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx")

from drift import DriftError
from drift.backends import Generator, Sampling, load_backend
from drift.backends.openai import OpenAIGenerator

FAST = {"backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0}


class StubState:
    """What the stub does next, and what it was asked. Tests set the knobs before a call."""

    def __init__(self):
        self.lock = threading.Lock()
        self.payloads: list[dict] = []
        self.auth: list[str | None] = []  # each request's Authorization header
        self.fail_first = 0  # fail this many requests with fail_status ...
        self.fail_status = 500
        self.hang = False  # ... or never answer (until the test ends) ...
        self.reject_n = False  # ... or answer HTTP 400 to n > 1, like llama.cpp ...
        self.ignore_n = False  # ... or return one choice whatever n is ...
        self.bad_json = False  # ... or answer 200 with something that is not JSON
        self.release = threading.Event()


class StubHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        state: StubState = self.server.state
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state.lock:
            state.payloads.append(payload)
            state.auth.append(self.headers.get("Authorization"))
            failing = state.fail_first > 0
            state.fail_first -= failing
        n = payload.get("n", 1)
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": "not found"})
        if state.hang:
            state.release.wait(10)
            return
        if failing:
            headers = {"Retry-After": "0"} if state.fail_status == 429 else {}
            return self.reply(state.fail_status, {"error": "busy"}, headers)
        if state.reject_n and n > 1:
            return self.reply(400, {"error": "Only one completion choice is allowed"})
        if state.bad_json:
            return self.reply(200, "<html>proxy error</html>")
        last = payload["messages"][-1]["content"]
        count = 1 if state.ignore_n else n
        # Choices in reverse index order: the client must sort them.
        choices = [
            {
                "index": j,
                "message": {"role": "assistant", "content": f"{last}|seed={payload.get('seed')}|j={j}"},
                "finish_reason": ("stop", "length")[j % 2],
            }
            for j in reversed(range(count))
        ]
        if last == "too-long":  # vLLM's answer to prompt + max_tokens over --max-model-len
            message = "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens"
            return self.reply(400, {"object": "error", "message": message})
        if last == "no-choices":
            choices = []
        if last == "no-content":  # a reasoning parser that cut the reply while thinking
            choices = [{"index": 0, "message": {"content": None, "reasoning_content": "hm"}, "finish_reason": "length"}]
        if last == "spaces":  # a reply with surrounding whitespace, which must come back as sent
            choices = [{"index": 0, "message": {"content": "  <answer>4</answer>\n"}, "finish_reason": "stop"}]
        usage = {"completion_tokens": 5 * count, "prompt_tokens": 20}
        if last == "q0":  # a prefix-cache hit, where the server reports one
            usage["prompt_tokens_details"] = {"cached_tokens": 8}
        self.reply(200, {"id": "x", "object": "chat.completion", "choices": choices, "usage": usage})

    def reply(self, status, body, headers=None):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    server.daemon_threads = True
    server.state = StubState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server.state
    server.state.release.set()
    server.shutdown()
    server.server_close()


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text, "name": "extra-key"}]


def test_replies_come_back_in_order_with_all_sampling_fields(stub):
    conversations = [user(f"q{i}") for i in range(12)]
    with OpenAIGenerator(stub.base_url, "tiny", concurrency=4, **FAST) as gen:
        assert isinstance(gen, Generator)
        replies = gen.generate(conversations, n=3, sampling=Sampling(0.7, 0.9, 64), seeds=list(range(50, 62)))
    assert replies == [[f"q{i}|seed={50 + i}|j={j}" for j in range(3)] for i in range(12)]
    assert gen.tokens_generated == 12 * 15
    assert gen.tokens_prefilled == 12 * 20 - 8
    assert len(stub.payloads) == 12
    payload = next(p for p in stub.payloads if p["messages"][-1]["content"] == "q0")
    assert payload == {
        "model": "tiny",
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q0"}],
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 50,
    }


def test_replies_come_back_as_sent_with_their_finish_reasons(stub):
    with OpenAIGenerator(stub.base_url, "tiny", **FAST) as gen:
        (replies,) = gen.generate([user("q")], n=2, sampling=Sampling(), seeds=[1])
        ((spaced,),) = gen.generate([user("spaces")], n=1, sampling=Sampling())
    assert [r.finish_reason for r in replies] == ["stop", "length"]
    assert spaced == "  <answer>4</answer>\n" and spaced.finish_reason == "stop" and spaced.token_ids is None


def test_sampling_seed_is_used_without_seeds_and_omitted_when_none(stub):
    with OpenAIGenerator(stub.base_url, "tiny", **FAST) as gen:
        assert gen.generate([user("a")], n=1, sampling=Sampling(seed=9)) == [["a|seed=9|j=0"]]
        gen.generate([user("b")], n=1, sampling=Sampling())
    assert "seed" not in stub.payloads[-1]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_failures_are_retried(stub, status):
    stub.fail_first, stub.fail_status = 2, status
    with OpenAIGenerator(stub.base_url, "tiny", max_retries=3, **FAST) as gen:
        assert gen.generate([user("a")], n=1, sampling=Sampling(seed=1)) == [["a|seed=1|j=0"]]
    assert len(stub.payloads) == 3


def test_exhausted_retries_name_the_url_and_the_last_error(stub):
    stub.fail_first, stub.fail_status = 100, 503
    gen = OpenAIGenerator(stub.base_url, "tiny", max_retries=2, **FAST)
    with pytest.raises(DriftError, match=r"127\.0\.0\.1.*3 attempts.*HTTP 503"):
        gen.generate([user("a")], n=1, sampling=Sampling())
    assert len(stub.payloads) == 3
    gen.close()


def _direct(base_url):
    return OpenAIGenerator(base_url, "tiny", max_retries=1, backoff=0.01, timeout=0.3), 2, 3


def _from_config(base_url):
    """--request-timeout and --max-retries reach the client from a command's config."""
    from drift.config import RolloutConfig

    cfg = RolloutConfig(backend="openai", base_url=base_url, model="tiny", request_timeout=0.3, max_retries=2)
    return OpenAIGenerator.from_config(cfg), 3, 8  # the default backoff: 1 s, then 2 s


@pytest.mark.parametrize("build", [_direct, _from_config])
def test_a_hanging_server_times_out_then_fails(stub, build):
    """A reply that takes longer than the timeout is retried max_retries times, then fails."""
    stub.hang = True
    gen, attempts, seconds = build(stub.base_url)
    start = time.monotonic()
    with pytest.raises(DriftError, match="ReadTimeout"):
        gen.generate([user("a")], n=1, sampling=Sampling())
    assert time.monotonic() - start < seconds
    assert len(stub.payloads) == attempts
    gen.close()


def test_the_api_key_comes_from_a_file_and_stays_out_of_the_saved_config(stub, tmp_path):
    """A server that needs a key gets it as a bearer token; the key is read from --api-key-file,
    so the run's saved config.yaml names the file, not the key."""
    from drift.cli import main
    from drift.config import RolloutConfig

    key = tmp_path / "key"
    key.write_text("sk-test-123\n")
    cfg = RolloutConfig(backend="openai", base_url=stub.base_url, model="tiny", api_key_file=str(key))
    with OpenAIGenerator.from_config(cfg) as gen:
        gen.generate([user("a")], n=1, sampling=Sampling())
    assert stub.auth == ["Bearer sk-test-123"]
    out = tmp_path / "r.jsonl"
    flags = ["--backend", "openai", "--base-url", stub.base_url, "--model", "tiny", "--api-key-file", str(key)]
    assert main(["rollout", *flags, "--num-prompts", "1", "--n", "1", "--max-turns", "1", "-o", str(out)]) == 0
    assert set(stub.auth) == {"Bearer sk-test-123"} and len(stub.auth) == 2
    assert "sk-test" not in (tmp_path / "r.config.yaml").read_text()
    (tmp_path / "empty").write_text("\n")
    for missing in (tmp_path / "nope", tmp_path / "empty"):
        with pytest.raises(DriftError, match="api key file"):
            OpenAIGenerator.from_config(RolloutConfig(backend="openai", api_key_file=str(missing)))


def test_no_server_is_a_connection_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", "tiny", max_retries=1, **FAST)
    with pytest.raises(DriftError, match="ConnectError"):
        gen.generate([user("a")], n=1, sampling=Sampling())
    gen.close()


def test_client_errors_are_not_retried(stub):
    stub.fail_first, stub.fail_status = 1, 400
    gen = OpenAIGenerator(stub.base_url, "tiny", **FAST)
    with pytest.raises(DriftError, match="HTTP 400"):
        gen.generate([user("a")], n=1, sampling=Sampling())
    assert len(stub.payloads) == 1
    gen.close()
    root = OpenAIGenerator(stub.base_url.removesuffix("/v1"), "tiny", **FAST)
    with pytest.raises(DriftError, match="ends in /v1"):
        root.generate([user("a")], n=1, sampling=Sampling())
    root.close()


@pytest.mark.parametrize("knob", ["reject_n", "ignore_n"])
def test_servers_without_n_get_one_request_per_reply(stub, knob):
    setattr(stub, knob, True)
    with OpenAIGenerator(stub.base_url, "tiny", concurrency=1, **FAST) as gen:
        first = gen.generate([user("a")], n=3, sampling=Sampling(), seeds=[20])
        assert first == [[f"a|seed={20 + j}|j=0" for j in range(3)]]
        assert not gen.supports_n
        assert len(stub.payloads) == 1 + 3  # one n=3 attempt, then three n=1 requests
        second = gen.generate([user("b"), user("c")], n=2, sampling=Sampling(), seeds=[1, 2])
    assert second == [["b|seed=1|j=0", "b|seed=2|j=0"], ["c|seed=2|j=0", "c|seed=3|j=0"]]
    assert len(stub.payloads) == 4 + 4  # no more n > 1 attempts
    assert all(p["n"] == 1 for p in stub.payloads[1:])


def test_a_request_refused_for_another_reason_than_n_keeps_n(stub):
    stub.fail_first, stub.fail_status = 100, 400  # e.g. a prompt longer than the context
    with OpenAIGenerator(stub.base_url, "tiny", **FAST) as gen, pytest.raises(DriftError, match="HTTP 400"):
        gen.generate([user("a")], n=2, sampling=Sampling())
    assert gen.supports_n
    assert [p["n"] for p in stub.payloads] == [2, 1]  # the n=2 try, then the first single-reply try


def test_a_response_that_is_not_a_completion_is_a_drift_error(stub):
    stub.bad_json = True
    with OpenAIGenerator(stub.base_url, "tiny", **FAST) as gen:
        with pytest.raises(DriftError, match="not a chat completion"):
            gen.generate([user("a")], n=1, sampling=Sampling())


def test_a_refusal_names_what_to_change(stub):
    with OpenAIGenerator(stub.base_url, "tiny", **FAST) as gen:
        with pytest.raises(DriftError, match="HTTP 400") as refused:
            gen.generate([user("too-long")], n=1, sampling=Sampling())
    assert "lower --max-new-tokens or --max-turns" in str(refused.value)
    with OpenAIGenerator(stub.base_url + "/x", "tiny", **FAST) as gen:
        with pytest.raises(DriftError, match="HTTP 404") as missing:
            gen.generate([user("a")], n=1, sampling=Sampling())
    assert "--model" in str(missing.value)


def test_no_choices_is_not_a_completion_and_no_content_is_an_empty_reply(stub):
    with OpenAIGenerator(stub.base_url, "tiny", **FAST) as gen:
        with pytest.raises(DriftError, match="not a chat completion"):
            gen.generate([user("no-choices")], n=1, sampling=Sampling())
        with pytest.warns(UserWarning, match="without content"):
            assert gen.generate([user("no-content")], n=1, sampling=Sampling()) == [[""]]


def test_loads_by_name_and_checks_requests(stub):
    gen = load_backend("openai", base_url=stub.base_url, model="tiny", **FAST)
    assert isinstance(gen, OpenAIGenerator)
    assert gen.generate([], n=2, sampling=Sampling()) == []
    with pytest.raises(DriftError, match="one per conversation"):
        gen.generate([user("a")], n=1, sampling=Sampling(), seeds=[])
    gen.close()
    with pytest.raises(DriftError, match="concurrency"):
        OpenAIGenerator(stub.base_url, "tiny", concurrency=0)


LIVE_URL = "http://127.0.0.1:8000/v1"


@pytest.mark.slow
def test_live_server_at_port_8000():
    """Talks to a real server when one runs at 127.0.0.1:8000 (e.g. `vllm serve <model>`)."""
    import httpx

    try:
        models = httpx.get(f"{LIVE_URL}/models", timeout=2.0).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        pytest.skip(f"no OpenAI-compatible server answers at {LIVE_URL}")
    with OpenAIGenerator(LIVE_URL, models[0]["id"], timeout=60.0, max_retries=1) as gen:
        question = [{"role": "user", "content": "What is 2+2?"}]
        replies = gen.generate([question] * 2, n=2, sampling=Sampling(max_new_tokens=16), seeds=[0, 1])
    assert [len(r) for r in replies] == [2, 2]
    assert all(isinstance(text, str) for r in replies for text in r)
    assert gen.tokens_generated > 0
